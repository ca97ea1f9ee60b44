//! `vfio-pm exporter`: Prometheus metrics over HTTP.
//!
//! Sysfs is re-read at every scrape; a background sampler also reads it every `--interval` so
//! that transitions and wakes between scrapes are counted. The doctor's D3cold verdict is made
//! from sysfs and the kernel version only: the exporter never opens a device. The HTTP server
//! and its fixed bounds are in [`server`].
//!
//! Metrics (Prometheus text format 0.0.4, encoded by `prometheus-client`); every per-device
//! metric carries the labels `bdf`, `vendor`, `device`, `class` and `driver`:
//!
//! | name | type | extra label | meaning |
//! | --- | --- | --- | --- |
//! | `vfio_pm_device_power_state` | gauge | `state` | 1 for the current `power_state`, 0 for the others |
//! | `vfio_pm_device_runtime_status` | gauge | `status` | 1 for the current `power/runtime_status` |
//! | `vfio_pm_device_runtime_active_seconds_total` | counter | | kernel: runtime-active (D0) time since boot |
//! | `vfio_pm_device_runtime_suspended_seconds_total` | counter | | kernel: runtime-suspended (D3hot+D3cold) time since boot |
//! | `vfio_pm_device_observed_state_seconds_total` | counter | `state` | time attributed to D0/D3hot/D3cold by the sampler since the exporter started |
//! | `vfio_pm_device_transitions_total` | counter | | state changes seen by the exporter |
//! | `vfio_pm_device_wakes_total` | counter | | wakes (suspended → active) seen or proven from the counters |
//! | `vfio_pm_device_runtime_jumps_total` | counter | | intervals where the kernel counters outgrew the clock (reset or bad read) |
//! | `vfio_pm_device_d3cold_reachable` | gauge | | 1 when the doctor says an idle device reaches D3cold |
//! | `vfio_pm_scrape_errors_total` | counter | | sysfs reads that failed during scrapes |
//! | `vfio_pm_build_info` | gauge | `version` | always 1 |

mod server;

use crate::watch::shutdown_signals;
use anyhow::{Context, Result};
use hyper::StatusCode;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeCounterValue, EncodeGaugeValue, NoLabelSet,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};
use server::Reply;
use std::collections::BTreeMap;
use std::net::TcpListener;
use std::os::fd::AsFd;
use std::process::ExitCode;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use vfio_pm::doctor::{diagnose, KernelSupport};
use vfio_pm::residency::{ResidencyTracker, Sample, StateTimes};
use vfio_pm::{DeviceReport, PciAddress, PowerState, RuntimeStatus, Sysfs};

/// Options of `vfio-pm exporter`.
#[derive(clap::Args, Debug)]
pub struct ExporterArgs {
    /// Address to listen on. Loopback by default: expose it further on purpose (reverse proxy,
    /// firewall), as the metrics describe the host's hardware.
    /// A host name is resolved (localhost:9860).
    #[arg(long, default_value = "127.0.0.1:9860")]
    pub listen: String,
    /// How often the background sampler reads sysfs to catch transitions and wakes between scrapes.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub interval: Duration,
    /// Export every PCI device, not only vfio-bound ones.
    #[arg(long)]
    pub all_devices: bool,
}

const POWER_STATES: [&str; 6] = ["D0", "D1", "D2", "D3hot", "D3cold", "unknown"];
const RUNTIME_STATUSES: [&str; 6] = [
    "active",
    "suspended",
    "suspending",
    "resuming",
    "error",
    "unsupported",
];

/// Trackers and error counts shared by the sampler thread and the scrapes.
struct State {
    sysfs: Sysfs,
    all_devices: bool,
    start: Instant,
    trackers: BTreeMap<PciAddress, ResidencyTracker>,
    scrape_errors: u64,
}

impl State {
    /// Reads the chosen devices and feeds the trackers; returns the reports and how many reads
    /// failed. Trackers of devices that left are dropped (their series end).
    fn sample(&mut self) -> (Vec<DeviceReport>, u64) {
        let devices = match self.sysfs.devices() {
            Ok(d) => d,
            Err(_) => return (Vec::new(), 1),
        };
        let now = self.start.elapsed();
        let mut errors = 0;
        let mut reports = Vec::new();
        for d in devices {
            let r = d.report();
            if !self.all_devices && !r.is_vfio() {
                continue;
            }
            let failed = [
                r.power_state.known().is_none(),
                r.runtime_status.known().is_none(),
                r.runtime_active_ms.known().is_none(),
                r.runtime_suspended_ms.known().is_none(),
            ]
            .into_iter()
            .filter(|&failed| failed)
            .count() as u64;
            if failed > 0 && !d.dir().is_dir() {
                // Unplugged while being read: gone, not an error.
                continue;
            }
            errors += failed;
            let tracker = self.trackers.entry(r.address).or_default();
            if let Some(s) = Sample::from_report(&r) {
                tracker.observe(now, &s);
            }
            reports.push(r);
        }
        self.trackers
            .retain(|a, _| reports.iter().any(|r| r.address == *a));
        (reports, errors)
    }

    /// A scrape: fresh reads, tracker updates, the doctor's verdicts.
    fn snapshot(&mut self) -> Snapshot {
        let (reports, errors) = self.sample();
        self.scrape_errors += errors;
        let devices = reports
            .into_iter()
            .map(|r| {
                let reachable = diagnose(&self.sysfs, r.address, KernelSupport::InferFromVersion)
                    .ok()
                    .map(|d| d.d3cold_reachable);
                if reachable.is_none() {
                    // The device left between the listing and the diagnosis.
                    self.scrape_errors += 1;
                }
                let tracker = self.trackers.get(&r.address);
                DeviceMetrics {
                    labels: vec![
                        ("bdf".into(), r.address.to_string()),
                        ("vendor".into(), label(&r.vendor)),
                        ("device".into(), label(&r.device)),
                        ("class".into(), label(&r.class)),
                        ("driver".into(), label(&r.driver)),
                    ],
                    power_state: r.power_state.known().cloned(),
                    runtime_status: r.runtime_status.known().cloned(),
                    active_seconds: r.runtime_active_ms.known().map(|ms| *ms as f64 / 1e3),
                    suspended_seconds: r.runtime_suspended_ms.known().map(|ms| *ms as f64 / 1e3),
                    observed: tracker.map(|t| t.observed()).unwrap_or_default(),
                    transitions: tracker.map_or(0, |t| t.transitions()),
                    wakes: tracker.map_or(0, |t| t.wakes()),
                    counter_jumps: tracker.map_or(0, |t| t.counter_jumps()),
                    d3cold_reachable: reachable,
                }
            })
            .collect();
        Snapshot {
            devices,
            scrape_errors: self.scrape_errors,
        }
    }
}

fn label(f: &vfio_pm::Field<String>) -> String {
    f.known().cloned().unwrap_or_default()
}

type Labels = Vec<(String, String)>;

#[derive(Debug)]
struct DeviceMetrics {
    labels: Labels,
    power_state: Option<PowerState>,
    runtime_status: Option<RuntimeStatus>,
    active_seconds: Option<f64>,
    suspended_seconds: Option<f64>,
    observed: StateTimes,
    transitions: u64,
    wakes: u64,
    counter_jumps: u64,
    d3cold_reachable: Option<bool>,
}

/// One scrape's values; encodes itself through `prometheus-client`.
#[derive(Debug)]
struct Snapshot {
    devices: Vec<DeviceMetrics>,
    scrape_errors: u64,
}

fn with(labels: &Labels, key: &str, value: &str) -> Labels {
    let mut l = labels.clone();
    l.push((key.into(), value.into()));
    l
}

/// The label values of a one-hot family: the known spellings, plus an odd current value.
fn one_hot_values(known: &[&str], current: Option<&str>) -> Vec<String> {
    let mut v: Vec<String> = known.iter().map(|s| s.to_string()).collect();
    if let Some(c) = current {
        if !known.contains(&c) {
            v.push(c.to_string());
        }
    }
    v
}

fn gauge<V: EncodeGaugeValue>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    rows: Vec<(Labels, V)>,
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(name, help, unit, MetricType::Gauge)?;
    for (l, v) in rows {
        m.encode_family(&l)?.encode_gauge(&v)?;
    }
    Ok(())
}

fn counter<V: EncodeCounterValue>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    rows: Vec<(Labels, V)>,
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(name, help, unit, MetricType::Counter)?;
    for (l, v) in rows {
        m.encode_family(&l)?
            .encode_counter::<NoLabelSet, V, f64>(&v, None)?;
    }
    Ok(())
}

impl Collector for Snapshot {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let seconds = Unit::Seconds;
        let devs = &self.devices;

        let mut rows = Vec::new();
        for d in devs {
            let Some(ps) = &d.power_state else { continue };
            for s in one_hot_values(&POWER_STATES, Some(ps.as_str())) {
                let v = i64::from(s == ps.as_str());
                rows.push((with(&d.labels, "state", &s), v));
            }
        }
        gauge(
            &mut enc,
            "vfio_pm_device_power_state",
            "PCI power state (sysfs power_state): 1 for the current state, 0 for the others.",
            None,
            rows,
        )?;

        let mut rows = Vec::new();
        for d in devs {
            let Some(rs) = &d.runtime_status else {
                continue;
            };
            for s in one_hot_values(&RUNTIME_STATUSES, Some(rs.as_str())) {
                let v = i64::from(s == rs.as_str());
                rows.push((with(&d.labels, "status", &s), v));
            }
        }
        gauge(
            &mut enc,
            "vfio_pm_device_runtime_status",
            "Runtime-PM status (sysfs power/runtime_status): 1 for the current status, 0 for the others.",
            None,
            rows,
        )?;

        counter(
            &mut enc,
            "vfio_pm_device_runtime_active",
            "Time the device was runtime-active (D0) since boot, from the kernel's power/runtime_active_time.",
            Some(&seconds),
            devs.iter()
                .filter_map(|d| Some((d.labels.clone(), d.active_seconds?)))
                .collect(),
        )?;
        counter(
            &mut enc,
            "vfio_pm_device_runtime_suspended",
            "Time the device was runtime-suspended (D3hot or D3cold, the kernel does not say which) since boot, from power/runtime_suspended_time.",
            Some(&seconds),
            devs.iter()
                .filter_map(|d| Some((d.labels.clone(), d.suspended_seconds?)))
                .collect(),
        )?;

        let mut rows = Vec::new();
        for d in devs {
            let o = &d.observed;
            for (state, t) in [
                ("D0", o.d0),
                ("D3hot", o.d3hot),
                ("D3cold", o.d3cold),
                ("D3", o.d3_unattributed),
                ("other", o.other),
            ] {
                rows.push((with(&d.labels, "state", state), t.as_secs_f64()));
            }
        }
        counter(
            &mut enc,
            "vfio_pm_device_observed_state",
            "Time attributed to each power state while this exporter ran: kernel active time to D0, suspended time to the D3 state the sampler saw (state=\"D3\" when it saw neither).",
            Some(&seconds),
            rows,
        )?;

        counter(
            &mut enc,
            "vfio_pm_device_transitions",
            "Changes of power state or runtime status seen by this exporter's sampler.",
            None,
            devs.iter()
                .map(|d| (d.labels.clone(), d.transitions))
                .collect(),
        )?;
        counter(
            &mut enc,
            "vfio_pm_device_wakes",
            "Wakes (runtime-suspended to active) seen by this exporter, including wakes between samples proven by the kernel counters; a lower bound.",
            None,
            devs.iter()
                .map(|d| (d.labels.clone(), d.wakes))
                .collect(),
        )?;
        counter(
            &mut enc,
            "vfio_pm_device_runtime_jumps",
            "Sample intervals in which the kernel's runtime counters grew by more than the time that passed (a counter reset or a bad read); that time went to the sampled state instead.",
            None,
            devs.iter()
                .map(|d| (d.labels.clone(), d.counter_jumps))
                .collect(),
        )?;
        gauge(
            &mut enc,
            "vfio_pm_device_d3cold_reachable",
            "1 when `vfio-pm doctor --no-open` says the idle device can reach D3cold, 0 when something blocks it.",
            None,
            devs.iter()
                .filter_map(|d| {
                    Some((d.labels.clone(), i64::from(d.d3cold_reachable?)))
                })
                .collect(),
        )?;
        counter(
            &mut enc,
            "vfio_pm_scrape_errors",
            "sysfs reads that failed during scrapes (device listing, power_state, runtime_status, counters).",
            None,
            vec![(Vec::new(), self.scrape_errors)],
        )?;
        let mut info = enc.encode_descriptor(
            "vfio_pm_build",
            "vfio-pm exporter build information.",
            None,
            MetricType::Info,
        )?;
        info.encode_info(&vec![("version", env!("CARGO_PKG_VERSION"))])?;
        Ok(())
    }
}

/// Renders the metrics of one scrape in the Prometheus text format.
fn render(state: &Mutex<State>) -> Result<String, std::fmt::Error> {
    let snapshot = state
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .snapshot();
    let mut registry = Registry::default();
    registry.register_collector(Box::new(snapshot));
    let mut out = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut out, &registry)?;
    Ok(out)
}

const INDEX: &str = "<html><head><title>vfio-pm exporter</title></head><body>\
<h1>vfio-pm exporter</h1><p><a href=\"/metrics\">Metrics</a></p></body></html>\n";

/// The exporter's pages by path.
fn page(state: &Mutex<State>, path: &str) -> Reply {
    match path {
        "/metrics" => match render(state) {
            Ok(body) => Reply {
                status: StatusCode::OK,
                content_type: prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
                body,
            },
            Err(_) => {
                state
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .scrape_errors += 1;
                Reply::text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "encoding the metrics failed\n",
                )
            }
        },
        "/" => Reply {
            status: StatusCode::OK,
            content_type: "text/html; charset=utf-8",
            body: INDEX.to_string(),
        },
        _ => Reply::text(
            StatusCode::NOT_FOUND,
            "not found; metrics are at /metrics\n",
        ),
    }
}

/// Runs the exporter until SIGINT or SIGTERM.
pub fn run(sysfs: &Sysfs, args: ExporterArgs) -> Result<ExitCode> {
    if args.interval.is_zero() {
        anyhow::bail!("--interval must be more than zero");
    }
    // Check the root before serving: a wrong --sysfs-root is an error, not empty metrics.
    sysfs.devices().context("cannot list PCI devices")?;
    // Blocked before any thread starts, so every thread inherits the mask.
    let sigfd = shutdown_signals()?;
    // A host name (localhost:9860) is resolved here; its first address that binds is used.
    let listener = TcpListener::bind(args.listen.as_str())
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr().context("the listening address")?;
    if !addr.ip().is_loopback() {
        eprintln!(
            "vfio-pm exporter: warning: listening on {}, not loopback: anyone who reaches it sees this host's devices",
            addr.ip()
        );
    }
    eprintln!("vfio-pm exporter: listening on http://{addr}/metrics");
    let state = Arc::new(Mutex::new(State {
        sysfs: sysfs.clone(),
        all_devices: args.all_devices,
        start: Instant::now(),
        trackers: BTreeMap::new(),
        scrape_errors: 0,
    }));

    let (stop_sampler, sampler_stopped) = mpsc::channel::<()>();
    let sampler = {
        let state = Arc::clone(&state);
        let interval = args.interval;
        std::thread::spawn(move || loop {
            state
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .sample();
            match sampler_stopped.recv_timeout(interval) {
                Err(RecvTimeoutError::Timeout) => continue,
                _ => break,
            }
        })
    };
    // The signal watcher ends the server; it runs until the process exits.
    let (stop_server, server_stopped) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let mut fds = [PollFd::new(sigfd.as_fd(), PollFlags::POLLIN)];
        loop {
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(n) if n > 0 => break,
                Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => break,
            }
        }
        let _ = stop_server.send(());
    });
    let pages = {
        let state = Arc::clone(&state);
        Arc::new(move |path: &str| page(&state, path))
    };
    let served = server::serve(listener, server::LIMITS, pages, server_stopped);
    drop(stop_sampler);
    let _ = sampler.join();
    served.context("the HTTP server failed")?;
    eprintln!("vfio-pm exporter: signal received, stopped");
    Ok(ExitCode::SUCCESS)
}
