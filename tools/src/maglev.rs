//! The Maglev refresher: a control-side thread that has the Maglev tables of the L4 listeners and of the L7
//! `mh` groups rebuilt after each health change (see [`crate::lb::L4Runtime::refresh_maglev`]), so no worker
//! ever builds one.

use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{bounded, select, Receiver, Sender};

use crate::api::Api;

/// The running refresher thread; stopped and joined when dropped.
pub struct MaglevRefresher {
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl MaglevRefresher {
    /// Starts the thread: it waits for the health board's change signal (`changes`) and then has the runtime
    /// build and send the tables that changed. A signal that comes while tables are built is kept (the channel
    /// holds one), so the last change is never missed.
    pub fn start(api: Arc<Api>, changes: Receiver<()>) -> Result<MaglevRefresher, String> {
        let (stop_tx, stop_rx) = bounded::<()>(0);
        let thread = std::thread::Builder::new()
            .name("xlb-maglev".into())
            .spawn(move || loop {
                select! {
                    recv(changes) -> signal => if signal.is_err() { break },
                    recv(stop_rx) -> _ => break,
                }
                api.refresh_maglev();
            })
            .map_err(|e| format!("starting the Maglev thread: {e}"))?;
        Ok(MaglevRefresher {
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }
}

impl Drop for MaglevRefresher {
    fn drop(&mut self) {
        drop(self.stop.take()); // disconnects: the thread's select returns
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use xlb_stack::config::Idle;
    use xlb_stack::local::Link;
    use xlb_stack::pipeline::Pipeline;
    use xlb_stack::xsk::WorkerPlan;

    use crate::config::Config;
    use crate::fuzzing::{LINK_MACS, PIPELINE_CONFIG};
    use crate::lb::PipelineFactory;

    /// Two workers' plans for `config` (the fuzz config's two interfaces).
    fn plans(config: &Config) -> Vec<WorkerPlan> {
        (0..2)
            .map(|w| WorkerPlan {
                name: format!("w{w}"),
                index: w,
                workers: 2,
                core: w,
                ports: vec![(0, w as u32), (1, w as u32)],
                links: (config.interfaces.iter().zip(LINK_MACS))
                    .map(|(i, mac)| Link {
                        mac,
                        addresses: i.addresses.clone(),
                        gateway: i.gateway,
                    })
                    .collect(),
                idle: Idle::Adaptive,
            })
            .collect()
    }

    #[test]
    fn workers_get_the_runtimes_tables_and_a_health_change_sends_new_ones() {
        let now = Instant::now();
        let config = Config::parse(PIPELINE_CONFIG).unwrap();
        let plans = plans(&config);
        let (mut factory, mut runtime) = PipelineFactory::new(&config, &plans, now);
        let changes = factory.take_board_changes().unwrap();
        let mut workers: Vec<_> = plans.iter().map(|p| factory.make(p)).collect();
        let first = runtime.maglev_tables().clone();
        // `dns` (mh) and `direct` (DR) use a table, `web` (wrr, FULLNAT) none.
        let slot = |name: &str| runtime.layout().listener(name).unwrap();
        let (dns, direct, web) = (slot("dns"), slot("direct"), slot("web"));
        assert!(first.get(dns).is_some() && first.get(direct).is_some() && first.get(web).is_none());
        for w in &workers {
            assert!(Arc::ptr_eq(w.handler().first.maglev_tables(), &first));
        }
        assert!(!runtime.refresh_maglev(), "no health change, nothing sent");

        // A `dns` server fails its check: the board signals, the runtime builds once and sends to every worker.
        let target = runtime.layout().targets.iter().position(|t| t.group == "dns").unwrap();
        runtime.board().set(target, false);
        assert!(changes.try_recv().is_ok(), "the board signalled the change");
        assert!(runtime.refresh_maglev());
        let second = runtime.maglev_tables().clone();
        assert!(!Arc::ptr_eq(second.get(dns).unwrap(), first.get(dns).unwrap()));
        assert!(
            Arc::ptr_eq(second.get(direct).unwrap(), first.get(direct).unwrap()),
            "the web group's table is kept"
        );
        for w in &mut workers {
            w.handle_timeout(now + Duration::from_secs(1));
            assert!(Arc::ptr_eq(w.handler().first.maglev_tables(), &second));
        }
    }

    #[test]
    fn l7_mh_groups_share_the_runtimes_tables_and_a_health_change_sends_new_ones() {
        let now = Instant::now();
        let http = "[[listener]]\nname = \"http\"\nvip = \"198.18.0.102\"\nport = 80\nprotocol = \"http\"\n\
                    scheduler = \"mh\"\ngroup = \"web\"\n\n[[group]]\nname = \"web\"";
        let config = Config::parse(&PIPELINE_CONFIG.replacen("[[group]]\nname = \"web\"", http, 1)).unwrap();
        let plans = plans(&config);
        let (mut factory, mut runtime) = PipelineFactory::new(&config, &plans, now);
        let changes = factory.take_board_changes().unwrap();
        let mut workers: Vec<_> = plans.iter().map(|p| factory.make(p)).collect();
        let web = config.groups.iter().position(|g| g.name == "web").unwrap();
        let dns = config.groups.iter().position(|g| g.name == "dns").unwrap();
        let first = runtime.l7_maglev_tables().clone();
        assert!(first.get(web).is_some(), "the group of an mh HTTP listener has a table");
        assert!(first.get(dns).is_none(), "a group no HTTP listener uses has none");
        let http_slot = runtime.layout().listener("http").unwrap();
        assert!(
            runtime.maglev_tables().get(http_slot).is_none(),
            "L4 builds none for an HTTP listener"
        );
        for w in &workers {
            let l7 = &w.handler().second;
            assert!(Arc::ptr_eq(l7.maglev_tables(), &first));
            assert!(
                Arc::ptr_eq(l7.group_table(web).unwrap(), first.get(web).unwrap()),
                "the one table"
            );
        }

        // A `web` server fails its check: one new table, sent to every worker's L7 stage.
        let target = runtime.layout().targets.iter().position(|t| t.group == "web").unwrap();
        runtime.board().set(target, false);
        assert!(changes.try_recv().is_ok());
        assert!(runtime.refresh_maglev());
        let second = runtime.l7_maglev_tables().clone();
        assert!(!Arc::ptr_eq(second.get(web).unwrap(), first.get(web).unwrap()));
        for w in &mut workers {
            w.handle_timeout(now + Duration::from_secs(1));
            let l7 = &w.handler().second;
            assert!(Arc::ptr_eq(l7.maglev_tables(), &second));
            assert!(Arc::ptr_eq(l7.group_table(web).unwrap(), second.get(web).unwrap()));
        }
    }
}
