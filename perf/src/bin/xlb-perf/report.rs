//! The result of an `xdp-loop` run: the JSON document and the human summary.

use super::*;

/// Builds the JSON result and the human summary.
pub(super) fn report(
    args: &XdpLoopArgs,
    start: &Sample,
    end: &Sample,
    dut: &DutReady,
    gen: &GenReady,
    dut_report: &DutReport,
    written_off: u64,
) -> (serde_json::Value, String) {
    let secs = end.at.duration_since(start.at).as_secs_f64();
    let rate = |a: u64, b: u64| b.saturating_sub(a) as f64 / secs;
    let sent_pps = rate(start.sent, end.sent);
    let gen_tx_pps = rate(start.completed, end.completed);
    let reflected_pps = rate(start.received, end.received);
    let dut_rx_pps = rate(start.dut.rings.rx_frames, end.dut.rings.rx_frames);
    let dut_tx_pps = rate(start.dut.rings.tx_frames, end.dut.rings.tx_frames);
    let loss_ratio = if sent_pps > 0.0 {
        (1.0 - reflected_pps / sent_pps).clamp(0.0, 1.0)
    } else {
        0.0
    };
    let blocked = (end.blocked_ns.saturating_sub(start.blocked_ns) as f64 / 1e9 / secs).min(1.0);
    // With the window seldom full, the generator is what limits the rate, not the loop.
    let generator_bound = blocked < 0.5;
    let mode = |m: AttachedMode| match m {
        AttachedMode::Native => "native",
        AttachedMode::Generic => "generic",
    };
    let totals = &end.dut;
    let rings = &totals.rings;
    let filter = dut_report.filter.map(|f| {
        json!({
            "to_socket": f.to_socket,
            "passed_not_ours": f.passed_not_ours,
            "passed_no_socket": f.passed_no_socket,
            "passed_malformed": f.passed_malformed,
        })
    });
    let frames = dut_report.frames;
    let kernel_share = |a: Option<CpuTime>, b: Option<CpuTime>| a.zip(b).and_then(|(a, b)| a.kernel_share(b));
    let dut_kernel = kernel_share(start.dut_cpu, end.dut_cpu);
    let gen_kernel = kernel_share(start.gen_cpu, end.gen_cpu);
    let json = json!({
        "scenario": "xdp_loop",
        "frame_size": args.size,
        "seconds": secs,
        "sent_pps": sent_pps,
        "gen_tx_pps": gen_tx_pps,
        "reflected_pps": reflected_pps,
        "dut_rx_pps": dut_rx_pps,
        "dut_tx_pps": dut_tx_pps,
        "loss_ratio": loss_ratio,
        "xdp_mode": mode(dut.mode),
        "dut_zero_copy": dut.zero_copy,
        "gen_xdp_mode": mode(gen.mode),
        "gen_zero_copy": gen.zero_copy,
        "generator_bound": generator_bound,
        "gen_blocked_ratio": blocked,
        "gen_written_off": written_off,
        // Share of each thread's CPU time spent in the kernel (AF_XDP transmission, wake-ups, and the
        // softirq work of the other side's receive path that runs on the way out of those syscalls).
        "dut_kernel_share": dut_kernel,
        "gen_kernel_share": gen_kernel,
        "batch": args.batch,
        "ring": args.ring,
        "window": args.window,
        "dut_core": args.dut_core,
        "gen_core": args.gen_core,
        // Whole-run totals (warm-up included), read before the DUT stopped.
        "dut_counters": {
            "rx": rings.rx_frames,
            "tx": rings.tx_frames,
            "tx_ring_full": rings.tx_ring_full,
            "fill_starved": rings.fill_starved,
            "kernel_rx_ring_full": rings.kernel_rx_ring_full,
            "kernel_fill_ring_empty": rings.kernel_fill_ring_empty,
            "kernel_rx_dropped": rings.kernel_rx_dropped,
            "drops": totals.stack.drops.iter().sum::<u64>(),
        },
        "dut_frames_after_stop": {
            "free": frames.free,
            "in_fill": frames.in_fill,
            "in_tx": frames.in_tx,
            "total": frames.total,
        },
        "dut_filter": filter,
    });
    let mpps = |pps: f64| pps / 1e6;
    let human = format!(
        "xdp-loop: {size}-byte frames, {mode} XDP, {copy}, {secs:.1} s: \
         sent {sent:.3} Mpps, DUT rx {drx:.3} / tx {dtx:.3} Mpps, reflected {refl:.3} Mpps, loss {loss:.3}%; \
         generator TX {gtx:.3} Mpps, window full {blocked:.0}% of the time: {bound}; \
         time in kernel: DUT thread {dk}, generator thread {gk}",
        size = args.size,
        mode = mode(dut.mode),
        copy = if dut.zero_copy { "zero-copy" } else { "copy mode" },
        sent = mpps(sent_pps),
        drx = mpps(dut_rx_pps),
        dtx = mpps(dut_tx_pps),
        refl = mpps(reflected_pps),
        loss = loss_ratio * 100.0,
        gtx = mpps(gen_tx_pps),
        blocked = blocked * 100.0,
        bound = if generator_bound {
            "GENERATOR-BOUND, the loop may sustain more than this"
        } else {
            "loop-bound"
        },
        dk = percent(dut_kernel),
        gk = percent(gen_kernel),
    );
    (json, human)
}

/// Formats a share as a percentage, or `?` if unknown.
fn percent(share: Option<f64>) -> String {
    share.map_or_else(|| "?".into(), |s| format!("{:.0}%", s * 100.0))
}
