//! Fault injection for supervision tests, off unless asked for: the hidden
//! `--inject-fault ACTOR:N:KIND[:repeat]` option of `txpipe run` makes the
//! named actor panic (`KIND = panic`) or fail with an error
//! (`KIND = error`) on its Nth unit of work (a chunk, a commit, a batch),
//! once, or on every unit from the Nth on with `:repeat`. Production
//! configuration files cannot enable it, and only builds with the
//! `test-hooks` feature (tests and examples) carry it: elsewhere
//! [`FaultPlan::hit`] does nothing.

use std::str::FromStr;
#[cfg(feature = "test-hooks")]
use std::sync::Mutex;

#[cfg(feature = "test-hooks")]
use rustc_hash::FxHashMap;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    Panic,
    Error,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FaultRule {
    pub actor: String,
    pub nth: u64,
    pub kind: FaultKind,
    pub repeat: bool,
}

impl FromStr for FaultRule {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = text.split(':').collect();
        let usage = || format!("fault {text:?}: expected ACTOR:N:panic|error[:repeat]");
        if !(3..=4).contains(&parts.len()) {
            return Err(usage());
        }
        let nth: u64 = parts[1].parse().map_err(|_| usage())?;
        if nth == 0 {
            return Err(format!("fault {text:?}: N counts from 1"));
        }
        let kind = match parts[2] {
            "panic" => FaultKind::Panic,
            "error" => FaultKind::Error,
            _ => return Err(usage()),
        };
        let repeat = match parts.get(3) {
            None => false,
            Some(&"repeat") => true,
            Some(_) => return Err(usage()),
        };
        Ok(FaultRule {
            actor: parts[0].to_string(),
            nth,
            kind,
            repeat,
        })
    }
}

/// The injected faults of one process, with a unit-of-work counter per
/// actor that survives the actor's restarts.
#[derive(Debug, Default)]
pub struct FaultPlan {
    #[cfg(feature = "test-hooks")]
    rules: Vec<FaultRule>,
    #[cfg(feature = "test-hooks")]
    counters: Mutex<FxHashMap<String, u64>>,
}

/// The error an injected `error` fault produces.
#[derive(Debug, thiserror::Error)]
#[error("injected fault in {actor} at unit {unit}")]
pub struct InjectedFault {
    pub actor: String,
    pub unit: u64,
}

impl FaultPlan {
    pub fn new(rules: Vec<FaultRule>) -> FaultPlan {
        #[cfg(not(feature = "test-hooks"))]
        let _ = rules;
        FaultPlan {
            #[cfg(feature = "test-hooks")]
            rules,
            #[cfg(feature = "test-hooks")]
            counters: Mutex::default(),
        }
    }

    /// Without the `test-hooks` feature: nothing to inject.
    #[cfg(not(feature = "test-hooks"))]
    #[inline(always)]
    pub fn hit(&self, _actor: &str) -> Result<(), InjectedFault> {
        Ok(())
    }

    /// Counts one unit of work of `actor` and fires a matching fault.
    #[cfg(feature = "test-hooks")]
    pub fn hit(&self, actor: &str) -> Result<(), InjectedFault> {
        if self.rules.is_empty() {
            return Ok(());
        }
        let unit = {
            let mut counters = self.counters.lock().unwrap_or_else(|e| e.into_inner());
            let counter = counters.entry(actor.to_string()).or_insert(0);
            *counter += 1;
            *counter
        };
        let fired = self.rules.iter().find(|rule| {
            rule.actor == actor && (unit == rule.nth || (rule.repeat && unit > rule.nth))
        });
        match fired.map(|rule| rule.kind) {
            None => Ok(()),
            Some(FaultKind::Error) => Err(InjectedFault {
                actor: actor.to_string(),
                unit,
            }),
            Some(FaultKind::Panic) => panic!("injected panic in {actor} at unit {unit}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rules() {
        let rule: FaultRule = "detector-patid1-0:3:panic".parse().unwrap();
        assert_eq!(rule.actor, "detector-patid1-0");
        assert_eq!(
            (rule.nth, rule.kind, rule.repeat),
            (3, FaultKind::Panic, false)
        );
        let rule: FaultRule = "tracker:1:error:repeat".parse().unwrap();
        assert!(rule.repeat);
        for bad in [
            "tracker",
            "tracker:0:panic",
            "tracker:x:panic",
            "tracker:1:explode",
            "a:1:panic:often",
        ] {
            assert!(bad.parse::<FaultRule>().is_err(), "{bad}");
        }
    }

    #[test]
    fn fires_once_on_the_nth_unit_or_from_it_on() {
        let plan = FaultPlan::new(vec![
            "a:2:error".parse().unwrap(),
            "b:2:error:repeat".parse().unwrap(),
        ]);
        let a: Vec<bool> = (0..4).map(|_| plan.hit("a").is_err()).collect();
        let b: Vec<bool> = (0..4).map(|_| plan.hit("b").is_err()).collect();
        assert_eq!(a, vec![false, true, false, false]);
        assert_eq!(b, vec![false, true, true, true]);
        assert!(plan.hit("c").is_ok());
    }

    #[test]
    #[should_panic(expected = "injected panic in a at unit 1")]
    fn panics_when_asked() {
        let plan = FaultPlan::new(vec!["a:1:panic".parse().unwrap()]);
        let _ = plan.hit("a");
    }
}
