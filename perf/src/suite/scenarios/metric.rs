//! How each scenario's numbers are taken: the metric definitions (key, label, which direction is better,
//! where the value comes from) and their extraction from a generator report and the CPU accounting.

use anyhow::{Context, Result};
use serde::Serialize;
use serde_json::Value;

use super::super::cpu::CpuUsage;
use super::Scenario;

/// How a metric compares between systems.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Better {
    /// More is better (rates).
    Higher,
    /// Less is better (latency, loss, CPU).
    Lower,
}

/// A metric of a scenario.
#[derive(Debug, Clone, Copy)]
pub struct MetricDef {
    /// Key in the results file.
    pub key: &'static str,
    /// Label in the table.
    pub label: &'static str,
    /// Which direction is better.
    pub better: Better,
    /// Where the value comes from.
    source: Source,
}

#[derive(Debug, Clone, Copy)]
pub(super) enum Source {
    /// A number in the generator report (JSON pointer), times a factor.
    Report(&'static str, f64),
    /// The load balancer's CPU seconds ([`CpuUsage::lb_cpu_s`]).
    LbCpu,
    /// The report number at the pointer divided by the load balancer's CPU seconds per wall second: work per
    /// CPU-second.
    PerLbCpu(&'static str),
    /// Busy CPU time of the whole host in µs divided by the operation count at the pointer.
    HostCpuPerOp(&'static str),
    /// Completed connections in percent of attempted ones (`/counts/completed` over completed + failed).
    SuccessPct,
    /// Completed HTTP requests whose answer was not `200` (`/counts/completed` minus `/status/200`).
    Non200,
    /// A number at the pointer, times a factor, if the report has it (counters only some systems give).
    Optional(&'static str, f64),
    /// The load balancer's CPU time in µs divided by the operation count at the pointer.
    LbCpuUsPerOp(&'static str),
    /// The generator's CPU seconds per wall second (how close it was to its one core).
    GeneratorCores,
    /// Resumed handshakes in percent of all the client made (`/handshakes`).
    ResumedPct,
}

pub(super) const fn metric(key: &'static str, label: &'static str, better: Better, source: Source) -> MetricDef {
    MetricDef {
        key,
        label,
        better,
        source,
    }
}

impl Scenario {
    /// The metric values of one run, in [`Scenario::metrics`] order.
    pub fn extract(self, report: &Value, cpu: &CpuUsage) -> Result<Vec<(&'static str, f64)>> {
        let number = |pointer: &str| -> Result<f64> {
            report
                .pointer(pointer)
                .and_then(Value::as_f64)
                .with_context(|| format!("{}: no number at {pointer} in the generator report", self.name()))
        };
        self.metrics()
            .iter()
            .filter_map(|m| {
                let value = match m.source {
                    Source::Optional(pointer, factor) => {
                        return report
                            .pointer(pointer)
                            .and_then(Value::as_f64)
                            .map(|v| Ok((m.key, v * factor)))
                    }
                    _ => self.value(m.source, report, cpu, &number),
                };
                Some(value.map(|v| (m.key, v)))
            })
            .collect()
    }

    /// The value of a non-optional `source`.
    fn value(
        self,
        source: Source,
        report: &Value,
        cpu: &CpuUsage,
        number: &dyn Fn(&str) -> Result<f64>,
    ) -> Result<f64> {
        Ok(match source {
            Source::Optional(pointer, factor) => number(pointer)? * factor,
            Source::LbCpuUsPerOp(pointer) => {
                let ops = number(pointer)?;
                if ops > 0.0 {
                    cpu.lb_cpu_s * 1e6 / ops
                } else {
                    0.0
                }
            }
            Source::GeneratorCores => {
                if cpu.wall_s > 0.0 {
                    cpu.generator.total() / cpu.wall_s
                } else {
                    0.0
                }
            }
            Source::ResumedPct => {
                let (full, resumed) = (number("/handshakes/full")?, number("/handshakes/resumed")?);
                if full + resumed > 0.0 {
                    100.0 * resumed / (full + resumed)
                } else {
                    0.0
                }
            }
            Source::Report(pointer, factor) => number(pointer)? * factor,
            Source::LbCpu => cpu.lb_cpu_s,
            Source::SuccessPct => {
                let (ok, failed) = (number("/counts/completed")?, number("/counts/failed")?);
                if ok + failed > 0.0 {
                    100.0 * ok / (ok + failed)
                } else {
                    0.0
                }
            }
            Source::Non200 => {
                let ok = report.pointer("/status/200").and_then(Value::as_f64).unwrap_or(0.0);
                (number("/counts/completed")? - ok).max(0.0)
            }
            Source::HostCpuPerOp(pointer) => {
                let ops = number(pointer)?;
                if ops > 0.0 {
                    cpu.host.busy() * 1e6 / ops
                } else {
                    0.0
                }
            }
            Source::PerLbCpu(pointer) => {
                let cores = if cpu.wall_s > 0.0 {
                    cpu.lb_cpu_s / cpu.wall_s
                } else {
                    0.0
                };
                if cores > 0.0 {
                    number(pointer)? / cores
                } else {
                    0.0
                }
            }
        })
    }
}
