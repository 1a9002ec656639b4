//! Checks across services, after every key is parsed.

use super::*;

/// Checks across services: dependencies and named volumes exist, health conditions can be met.
pub(super) fn cross_check(f: &ComposeFile) -> R<()> {
    for (name, s) in &f.services {
        let sk = format!("services.{name}");
        for (dep, cond) in &s.depends_on {
            let dk = format!("{sk}.depends_on.{dep}");
            if dep == name {
                return kerr(&dk, "a service cannot depend on itself");
            }
            let Some(d) = f.services.get(dep) else {
                return kerr(&dk, format!("no service `{dep}` in this file"));
            };
            if *cond == Condition::Healthy
                && !d.healthcheck.as_ref().is_some_and(|h| {
                    matches!(h.test, Some(HealthTest::Cmd(_) | HealthTest::Shell(_)))
                })
            {
                return kerr(
                    &dk,
                    format!(
                        "condition service_healthy, but `{dep}` has no healthcheck test: give `services.{dep}.healthcheck.test`"
                    ),
                );
            }
            if *cond == Condition::CompletedSuccessfully && d.restart != Restart::No {
                return kerr(
                    &dk,
                    format!(
                        "condition service_completed_successfully needs `{dep}` to have `restart: no` (it must be allowed to finish)"
                    ),
                );
            }
        }
        if let NetworkMode::Service(other) = &s.network_mode
            && (other == name || !f.services.contains_key(other))
        {
            return kerr(
                &format!("{sk}.network_mode"),
                format!("service:{other} names no other service in this file"),
            );
        }
        for (i, m) in s.volumes.iter().enumerate() {
            if let Mount::Volume {
                source: Some(v), ..
            } = m
                && !f.volumes.contains_key(v)
            {
                return kerr(
                    &format!("{sk}.volumes[{i}]"),
                    format!(
                        "named volume `{v}` is not declared: add `volumes: {{{v}: {{}}}}` at the top level"
                    ),
                );
            }
        }
    }
    crate::order::start_order(f)
        .map(|_| ())
        .map_err(|e| KeyError {
            key: "services".into(),
            message: e.to_string(),
        })
}
