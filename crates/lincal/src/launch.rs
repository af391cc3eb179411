//! `lincal launch`: one process per GPU for a data-parallel training command, as torchrun
//! does. Each rank learns its place from the environment ([`lincal_train::distributed`]'s
//! `LINCAL_*` variables) and sees one GPU; rank 0 logs and writes the run directory. A rank
//! that fails ends the whole job (the others are stopped) with a message naming it, and the
//! same command resumes from the run's last checkpoint.

use anyhow::{Context, Result, bail};
use clap::{Args, Parser};
use lincal_train::distributed::{DEFAULT_MASTER, MASTER_ENV, RANK_ENV, WORLD_SIZE_ENV};
use std::process::{Child, Command, ExitStatus};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

#[derive(Args)]
pub struct LaunchArgs {
    /// Processes (GPUs) on this node.
    #[arg(long)]
    gpus: usize,
    /// Nodes in the job.
    #[arg(long, default_value_t = 1)]
    nodes: usize,
    /// This node's index, 0 to nodes - 1 (node 0 hosts rank 0).
    #[arg(long, default_value_t = 0)]
    node_rank: usize,
    /// Where rank 0 meets the others: an address of node 0 that every node reaches, and a
    /// free port.
    #[arg(long, default_value = DEFAULT_MASTER)]
    master: String,
    /// The training command and its arguments, after `--`: sft, reward-model, ppo or grpo.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

/// The commands whose trainers run data-parallel.
const DATA_PARALLEL: [&str; 4] = ["sft", "reward-model", "ppo", "grpo"];

/// How long the other ranks get to end after a rank failed, before they are killed.
const STOP_GRACE: Duration = Duration::from_secs(10);

pub fn run(args: LaunchArgs) -> Result<()> {
    let world = args.gpus * args.nodes;
    if args.gpus == 0 || args.nodes == 0 {
        bail!("--gpus and --nodes must be at least 1");
    }
    if args.node_rank >= args.nodes {
        bail!(
            "--node-rank {} is not below --nodes {}: nodes count from 0",
            args.node_rank,
            args.nodes
        );
    }
    let name = args.command[0].as_str();
    if world == 1 {
        // One rank is the plain command, run here: exactly what it does on its own.
        let cli = crate::cli::Cli::try_parse_from(
            std::iter::once("lincal").chain(args.command.iter().map(String::as_str)),
        )?;
        return crate::cli::run(cli);
    }
    if !DATA_PARALLEL.contains(&name) {
        bail!(
            "`lincal launch` runs {} over several GPUs; `{name}` runs in one process: \
             start it without the launcher, or with --gpus 1",
            DATA_PARALLEL.join(", ")
        );
    }
    check_device(&args.command)?;
    lincal_train::distributed::check_collectives_available(world)?;
    let visible = visible_devices();
    if let Some(list) = &visible
        && list.len() < args.gpus
    {
        bail!(
            "--gpus {} but CUDA_VISIBLE_DEVICES lists {} ({}): ask for at most that many",
            args.gpus,
            list.len(),
            list.join(",")
        );
    }
    let exe = std::env::current_exe().context("finding the lincal executable")?;
    let mut ranks = Vec::with_capacity(args.gpus);
    for local in 0..args.gpus {
        let rank = args.node_rank * args.gpus + local;
        let mut command = Command::new(&exe);
        command
            .args(&args.command)
            .env(RANK_ENV, rank.to_string())
            .env(WORLD_SIZE_ENV, world.to_string())
            .env(MASTER_ENV, &args.master)
            // Each rank sees its own GPU as cuda:0.
            .env(
                "CUDA_VISIBLE_DEVICES",
                device_for(visible.as_deref(), local),
            );
        match command.spawn() {
            Ok(child) => ranks.push((rank, child)),
            Err(error) => {
                // The ranks already started would wait for this one: stop them.
                for (_, child) in &mut ranks {
                    let _ = child.kill();
                    let _ = child.wait();
                }
                return Err(error)
                    .with_context(|| format!("starting rank {rank} ({})", exe.display()));
            }
        }
    }
    forward_termination();
    supervise(ranks, STOP_GRACE)
}

/// Each rank sees its own GPU as `cuda:0`, so a command may leave `--device` out or name
/// that one.
fn check_device(command: &[String]) -> Result<()> {
    let given = command.iter().enumerate().find_map(|(index, arg)| {
        if arg == "--device" {
            command.get(index + 1).map(String::as_str)
        } else {
            arg.strip_prefix("--device=")
        }
    });
    match given {
        None | Some("auto" | "cuda" | "cuda:0") => Ok(()),
        Some(other) => bail!(
            "--device {other}: under `lincal launch` each rank runs on its own GPU, which it \
             sees as cuda:0; leave --device out (pick the GPUs with CUDA_VISIBLE_DEVICES)"
        ),
    }
}

/// The GPU local rank `local` uses: the `local`-th of an existing CUDA_VISIBLE_DEVICES list
/// (checked to be long enough), else its index.
fn device_for(visible: Option<&[String]>, local: usize) -> String {
    visible.map_or_else(|| local.to_string(), |list| list[local].clone())
}

fn visible_devices() -> Option<Vec<String>> {
    let list = std::env::var("CUDA_VISIBLE_DEVICES").ok()?;
    Some(list.split(',').map(|d| d.trim().to_string()).collect())
}

/// The signal the launcher received (0: none), for [`supervise`] to pass on to the ranks.
static RECEIVED: AtomicI32 = AtomicI32::new(0);

extern "C" fn remember(signal: libc::c_int) {
    RECEIVED.store(signal, Ordering::SeqCst);
}

/// SIGINT and SIGTERM to the launcher are passed on to every rank, which end as they would
/// alone (a killed run resumes from its last checkpoint).
fn forward_termination() {
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe {
            libc::signal(signal, remember as *const () as libc::sighandler_t);
        }
    }
}

fn send(child: &Child, signal: libc::c_int) {
    // SAFETY: kill only sends a signal to the child's pid, which has not been reaped yet.
    unsafe {
        libc::kill(child.id() as libc::pid_t, signal);
    }
}

/// Waits for every rank. When one fails (or the launcher is told to stop), the others get
/// SIGTERM, then SIGKILL after `grace`; the error names the first rank that failed.
fn supervise(mut ranks: Vec<(usize, Child)>, grace: Duration) -> Result<()> {
    let mut failed: Option<(usize, ExitStatus)> = None;
    let mut stopping: Option<Instant> = None;
    let mut done = vec![false; ranks.len()];
    while done.contains(&false) {
        for (index, (rank, child)) in ranks.iter_mut().enumerate() {
            if done[index] {
                continue;
            }
            if let Some(status) = child.try_wait().context("waiting for a rank")? {
                done[index] = true;
                if !status.success() && failed.is_none() && stopping.is_none() {
                    failed = Some((*rank, status));
                }
            }
        }
        let signal = RECEIVED.load(Ordering::SeqCst);
        if stopping.is_none() && (failed.is_some() || signal != 0) {
            stopping = Some(Instant::now());
            let signal = if signal != 0 { signal } else { libc::SIGTERM };
            for (index, (_, child)) in ranks.iter().enumerate() {
                if !done[index] {
                    send(child, signal);
                }
            }
        }
        if stopping.is_some_and(|since| since.elapsed() > grace) {
            for (index, (_, child)) in ranks.iter_mut().enumerate() {
                if !done[index] {
                    let _ = child.kill();
                }
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if let Some((rank, status)) = failed {
        bail!(
            "rank {rank} failed ({status}); the other ranks were stopped. Its error is above; \
             run the same command again to resume from the run's last checkpoint"
        );
    }
    let signal = RECEIVED.load(Ordering::SeqCst);
    if signal != 0 {
        bail!("stopped by signal {signal}; run the same command again to resume");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shell(script: &str) -> Child {
        Command::new("sh").args(["-c", script]).spawn().unwrap()
    }

    #[test]
    fn a_failing_rank_stops_the_others_and_is_named() {
        let started = Instant::now();
        let ranks = vec![
            (0, shell("exec sleep 30")),
            (1, shell("exit 3")),
            // Ignores SIGTERM: killed once the grace period is over.
            (2, shell("trap '' TERM; exec sleep 30")),
        ];
        let error = supervise(ranks, Duration::from_millis(500))
            .unwrap_err()
            .to_string();
        assert!(error.contains("rank 1 failed"), "{error}");
        assert!(error.contains("exit status: 3"), "{error}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn ranks_that_all_succeed_end_the_job_cleanly() {
        let ranks = vec![(0, shell("exit 0")), (1, shell("sleep 0.2"))];
        supervise(ranks, STOP_GRACE).unwrap();
    }

    #[test]
    fn a_command_may_only_name_the_ranks_own_gpu() {
        let command = |args: &[&str]| args.iter().map(|a| a.to_string()).collect::<Vec<_>>();
        check_device(&command(&["sft", "--out", "x"])).unwrap();
        check_device(&command(&["sft", "--device", "cuda:0"])).unwrap();
        let error = check_device(&command(&["sft", "--device", "cpu"])).unwrap_err();
        assert!(error.to_string().contains("--device cpu: under"), "{error}");
        assert!(check_device(&command(&["sft", "--device=cuda:1"])).is_err());
    }

    #[test]
    fn each_rank_gets_its_own_device() {
        let visible = ["3".to_string(), "5".to_string()];
        assert_eq!(device_for(Some(&visible), 1), "5");
        assert_eq!(device_for(None, 1), "1");
    }
}
