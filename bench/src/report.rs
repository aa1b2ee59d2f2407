//! The figures the bench measured and how it shows them: one table on
//! stdout (ours, direct, the peers, the ratios, the target) and the same in
//! JSON.

/// No counterpart on that path: a figure of the tunnel alone, or a peer
/// that was not measured.
pub const NA: f64 = f64::NAN;

/// What a figure is held to.
#[derive(Debug, Clone, Copy)]
pub enum Goal {
    /// The tunnel figure over the direct one, at least this.
    Ratio(f64),
    /// The tunnel figure, at most this (in the figure's unit).
    AtMost(f64),
    /// Reported, no target.
    Report,
}

impl Goal {
    pub fn text(self) -> String {
        match self {
            Goal::Ratio(r) => format!(">= {r:.2}x"),
            Goal::AtMost(v) => format!("<= {v}"),
            Goal::Report => "-".into(),
        }
    }

    pub fn met(self, f: &Figure) -> Option<bool> {
        match self {
            Goal::Ratio(r) => Some(f.ratio() >= r),
            Goal::AtMost(v) => Some(f.tunnel <= v),
            Goal::Report => None,
        }
    }
}

/// Which way a figure improves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Better {
    /// Rates: requests, connections, bytes per second.
    Higher,
    /// Costs: time, CPU, memory, drops.
    Lower,
}

impl Better {
    /// Rates are per second; everything else the bench reports is a cost.
    pub fn of(unit: &str) -> Better {
        if unit.ends_with("/s") {
            Better::Higher
        } else {
            Better::Lower
        }
    }

    pub fn text(self) -> &'static str {
        match self {
            Better::Higher => "higher",
            Better::Lower => "lower",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Figure {
    pub name: &'static str,
    pub unit: &'static str,
    pub direct: f64,
    /// Ours: through the gateway and an agent.
    pub tunnel: f64,
    /// nginx as a reverse proxy in front of the same origin.
    pub nginx: f64,
    /// rathole over WebSocket+TLS in front of the same origin.
    pub rathole: f64,
    pub goal: Goal,
}

impl Figure {
    /// A figure with no peer values (see [`Figure::peers`]).
    pub fn new(
        name: &'static str,
        unit: &'static str,
        direct: f64,
        tunnel: f64,
        goal: Goal,
    ) -> Figure {
        Figure {
            name,
            unit,
            direct,
            tunnel,
            nginx: NA,
            rathole: NA,
            goal,
        }
    }

    /// The same figure measured through nginx and rathole.
    pub fn peers(mut self, nginx: f64, rathole: f64) -> Figure {
        self.nginx = nginx;
        self.rathole = rathole;
        self
    }

    pub fn better(&self) -> Better {
        Better::of(self.unit)
    }

    /// Ours over direct.
    pub fn ratio(&self) -> f64 {
        if self.direct.is_finite() {
            self.tunnel / self.direct
        } else {
            NA
        }
    }

    /// Ours over rathole's: ahead above 1 for rates, below 1 for costs.
    pub fn vs_rathole(&self) -> f64 {
        if self.rathole.is_finite() && self.rathole != 0.0 {
            self.tunnel / self.rathole
        } else {
            NA
        }
    }

    pub fn ahead_of_rathole(&self) -> Option<bool> {
        let r = self.vs_rathole();
        if !r.is_finite() {
            return None;
        }
        Some(match self.better() {
            Better::Higher => r > 1.0,
            Better::Lower => r < 1.0,
        })
    }
}

fn cell(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.1}")
    } else {
        "-".into()
    }
}

fn times(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.2}x")
    } else {
        "-".into()
    }
}

/// The table: every figure with TLS on the tunnel and the three plugins on
/// the route, unless its name says otherwise. The peers' columns appear
/// only when the peers were measured, so a `--no-peers` table stays as
/// narrow as before.
pub fn table(figures: &[Figure], with_peers: bool) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    if with_peers {
        let _ = writeln!(
            out,
            "{:<29} {:>6} {:>10} {:>10} {:>10} {:>10} {:>6} {:>14} {:>6} {:>9} {:>4}",
            "figure",
            "unit",
            "direct",
            "tunnel",
            "nginx",
            "rathole",
            "ratio",
            "vs rathole",
            "better",
            "target",
            "met"
        );
    } else {
        let _ = writeln!(
            out,
            "{:<29} {:>6} {:>10} {:>10} {:>6} {:>9} {:>4}",
            "figure", "unit", "direct", "tunnel", "ratio", "target", "met"
        );
    }
    for f in figures {
        let met = match f.goal.met(f) {
            Some(true) => "yes",
            Some(false) => "NO",
            None => "",
        };
        if with_peers {
            let vs = match f.ahead_of_rathole() {
                Some(true) => format!("{} ahead", times(f.vs_rathole())),
                Some(false) => format!("{} behind", times(f.vs_rathole())),
                None => "-".into(),
            };
            let better = if f.vs_rathole().is_finite() {
                f.better().text()
            } else {
                ""
            };
            let _ = writeln!(
                out,
                "{:<29} {:>6} {:>10} {:>10} {:>10} {:>10} {:>6} {:>14} {:>6} {:>9} {:>4}",
                f.name,
                f.unit,
                cell(f.direct),
                cell(f.tunnel),
                cell(f.nginx),
                cell(f.rathole),
                times(f.ratio()),
                vs,
                better,
                f.goal.text(),
                met
            );
        } else {
            let _ = writeln!(
                out,
                "{:<29} {:>6} {:>10} {:>10} {:>6} {:>9} {:>4}",
                f.name,
                f.unit,
                cell(f.direct),
                cell(f.tunnel),
                times(f.ratio()),
                f.goal.text(),
                met
            );
        }
    }
    if with_peers {
        out.push_str(
            "tunnel = ours (gateway + agent, TLS 1.3, 3 plugins); rathole = over WebSocket+TLS\n\
             ratio = tunnel/direct; vs rathole = tunnel/rathole: ahead above 1 where higher is \
             better, below 1 where lower is\n",
        );
    }
    out
}

/// A number for JSON: `null` when not measured.
pub fn num(x: f64) -> serde_json::Value {
    if x.is_finite() {
        serde_json::json!(x)
    } else {
        serde_json::Value::Null
    }
}

pub fn json(f: &Figure) -> serde_json::Value {
    serde_json::json!({
        "name": f.name, "unit": f.unit, "direct": num(f.direct),
        "tunnel": num(f.tunnel), "nginx": num(f.nginx), "rathole": num(f.rathole),
        "ratio": num(f.ratio()), "vs_rathole": num(f.vs_rathole()),
        "better": f.better().text(), "ahead_of_rathole": f.ahead_of_rathole(),
        "target": f.goal.text(), "met": f.goal.met(f),
    })
}

#[cfg(test)]
mod checks {
    use super::*;

    #[test]
    fn targets_are_judged_by_ratio_or_ceiling() {
        let fig = |direct: f64, tunnel: f64| Figure::new("x", "u", direct, tunnel, Goal::Report);
        assert_eq!(Goal::Ratio(0.5).met(&fig(100.0, 50.0)), Some(true));
        assert_eq!(Goal::Ratio(0.5).met(&fig(100.0, 49.0)), Some(false));
        assert_eq!(Goal::AtMost(10.0).met(&fig(NA, 10.0)), Some(true));
        assert_eq!(Goal::AtMost(10.0).met(&fig(NA, 10.5)), Some(false));
        assert_eq!(Goal::Report.met(&fig(1.0, 1.0)), None);
        assert_eq!(Goal::Ratio(0.4).text(), ">= 0.40x");
        assert_eq!(Goal::AtMost(16.0).text(), "<= 16");
    }

    #[test]
    fn ahead_of_rathole_depends_on_which_way_the_figure_improves() {
        let rate = Figure::new("rps_c64", "req/s", 100.0, 30.0, Goal::Report).peers(60.0, 20.0);
        assert_eq!(rate.better(), Better::Higher);
        assert_eq!(rate.vs_rathole(), 1.5);
        assert_eq!(rate.ahead_of_rathole(), Some(true));
        let cost = Figure::new("cpu_us_per_req", "us", NA, 30.0, Goal::Report).peers(10.0, 20.0);
        assert_eq!(cost.better(), Better::Lower);
        assert_eq!(cost.vs_rathole(), 1.5);
        assert_eq!(cost.ahead_of_rathole(), Some(false));
        assert_eq!(Better::of("MiB/s"), Better::Higher);
        assert_eq!(Better::of("KiB"), Better::Lower);
        // Without rathole there is nothing to be ahead of.
        let alone = Figure::new("idle_agent_kib", "KiB", NA, 70.0, Goal::Report);
        assert!(alone.vs_rathole().is_nan());
        assert_eq!(alone.ahead_of_rathole(), None);
        assert_eq!(json(&alone)["ahead_of_rathole"], serde_json::Value::Null);
        assert_eq!(json(&rate)["vs_rathole"], 1.5);
        assert_eq!(json(&rate)["better"], "higher");
    }

    #[test]
    fn the_table_names_the_direction_and_keeps_its_columns_aligned() {
        let figs = [
            Figure::new("rps_c64", "req/s", 100_000.0, 30_000.0, Goal::Ratio(0.5))
                .peers(60_000.0, 20_000.0),
            Figure::new("latency_c1_p50_us", "us", 20.0, 200.0, Goal::Report).peers(40.0, 100.0),
            Figure::new("idle_agent_kib", "KiB", NA, 70.0, Goal::AtMost(16.0)),
        ];
        let t = table(&figs, true);
        let lines: Vec<&str> = t.lines().collect();
        assert!(
            lines[1].contains("1.50x ahead") && lines[1].contains("higher"),
            "{t}"
        );
        assert!(
            lines[2].contains("2.00x behind") && lines[2].contains("lower"),
            "{t}"
        );
        assert!(lines[3].contains("NO"), "{t}");
        // Every row of the table is as wide as its header.
        for l in &lines[1..4] {
            assert_eq!(l.len(), lines[0].len(), "{t}");
        }
        let narrow = table(&figs, false);
        assert!(!narrow.contains("rathole"), "{narrow}");
        assert!(narrow.lines().nth(1).unwrap().contains("0.30x"), "{narrow}");
    }
}
