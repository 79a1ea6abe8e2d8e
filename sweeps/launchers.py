"""Where a sweep's tasks run (a task: one chain of grid.chains, a method and seed over all its N): serial, in this
process; local, in a pool of worker processes (one GPU, or a share of the cores, each); slurm, as one job array
through submitit. runs.csv, written by the tasks, is what a rerun resumes from, whichever launcher ran them."""
import contextlib
import multiprocessing
import os
import shlex
import sys
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool

from tqdm import tqdm

from errors import UserError
from experiment.runtime import teardown_runtime
from jobs import open_job
from sweeps import records, report, runner
from sweeps.grid import chains, sweep_runs
from sweeps.options import slurm_minutes, sweep_defaults

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
POLL_SECONDS = 2.0  # between two looks at the Slurm jobs' states
TRACKER_WARNING = 'ignore:resource_tracker:UserWarning'  # its "There appear to be N leaked semaphore objects"


def serial(opt, runtime, folder: str, command: dict, pending: list, progress, table) -> None:
    """Every task in this process, one after another (the data decoded once for all), adding to `table`."""
    sweep = runner.Sweep(opt, runtime, pending, table, progress)
    records.record_command(folder, command)  # data and model have loaded: the folder's first output
    for task in chains(pending):
        sweep.run_chain(task)


def _finished(task: list, lines: list[str], progress) -> None:
    for line in lines:
        progress.write(line)
    progress.update(len(task))


def _start_worker(slots, devices: list[str], threads: int) -> None:
    """A local worker's setup, before CUDA starts: its GPU (by its slot) or its share of the cores."""
    slot = slots.get()
    if devices:
        os.environ['CUDA_VISIBLE_DEVICES'] = devices[slot % len(devices)]
    import torch
    torch.set_num_threads(threads)


@contextlib.contextmanager
def _worker_environment(threads: int):
    """The environment and warning filters the spawned workers start with, which act before their first import."""
    saved = {name: os.environ.get(name) for name in ('OMP_NUM_THREADS', 'TQDM_DISABLE')}
    os.environ.update(OMP_NUM_THREADS=str(threads), TQDM_DISABLE='1')  # the main process draws the one progress bar
    # A killed worker leaves semaphores that the resource tracker (started here, with these filters) removes; its
    # warning about them would follow the sweep's one sentence.
    sys.warnoptions.append(TRACKER_WARNING)
    try:
        yield
    finally:
        sys.warnoptions.remove(TRACKER_WARNING)
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def local(opt, runtime, folder: str, command: dict, pending: list, progress, table) -> None:
    """--jobs worker processes (spawned: no CUDA state is forked), each taking whole tasks (they write runs.csv
    themselves: `table` is read again after)."""
    devices = []
    if runtime.device.type == 'cuda':
        import torch
        visible = os.environ.get('CUDA_VISIBLE_DEVICES')
        devices = visible.split(',') if visible else [str(index) for index in range(torch.cuda.device_count())]
    jobs = opt.jobs or max(1, len(devices))
    threads = max(1, (os.cpu_count() or 1) // jobs)
    print(f'local pool of {jobs} workers' + (f' over GPUs {",".join(devices)}' if devices else
                                             f', {threads} threads each'), flush=True)
    context = multiprocessing.get_context('spawn')
    with _worker_environment(threads):
        slots = context.Queue()
        for slot in range(jobs):
            slots.put(slot)
        with ProcessPoolExecutor(jobs, mp_context=context, initializer=_start_worker,
                                 initargs=(slots, devices, threads)) as pool:
            futures = {pool.submit(runner.run_task, opt, folder, command, pending, task): task
                       for task in chains(pending)}
            for future in as_completed(futures):
                try:
                    _finished(futures[future], future.result(), progress)
                except BrokenProcessPool:
                    pool.shutdown(cancel_futures=True)
                    raise UserError('a worker process of the local pool died (killed, or out of memory); the finished '
                                    'tasks are in runs.csv: rerun the same command to run the others') from None
                except BaseException:
                    pool.shutdown(cancel_futures=True)
                    raise


def _slurm_parameters(opt, folder: str) -> dict:
    """submitit's AutoExecutor parameters from the --slurm-* flags (the slurm_* ones apply on a cluster only)."""
    # the jobs unpickle this project's functions, wherever the sweep was started from
    setup = [f'export PYTHONPATH={shlex.quote(REPO)}${{PYTHONPATH:+:$PYTHONPATH}}']
    parameters = dict(name=f'sweep_{os.path.basename(folder)}', slurm_setup=setup, local_setup=setup,
                      timeout_min=slurm_minutes(opt.slurm_time) if opt.slurm_time else None,
                      cpus_per_task=opt.slurm_cpus_per_task, slurm_partition=opt.slurm_partition,
                      slurm_gpus_per_task=opt.slurm_gpus_per_task, local_gpus_per_node=opt.slurm_gpus_per_task,
                      slurm_mem=opt.slurm_mem, slurm_array_parallelism=opt.slurm_array_parallelism,
                      slurm_additional_parameters=dict(item.split('=', 1) for item in opt.slurm_extra or ()) or None)
    return {key: value for key, value in parameters.items() if value is not None}


def slurm_task(opt, folder: str, command: dict, pending: list, task: list) -> list[str]:
    """A Slurm job: its torch threads are its CPUs (--slurm-cpus-per-task, else Slurm's count), then run_task."""
    threads = opt.slurm_cpus_per_task or int(os.environ.get('SLURM_CPUS_PER_TASK', '0'))
    if threads:
        import torch
        torch.set_num_threads(threads)
    return runner.run_task(opt, folder, command, pending, task)


def slurm(opt, runtime, folder: str, command: dict, pending: list, progress, table) -> None:
    """One job array through submitit, one task a job; its states polled, a failed task named with its log (the jobs
    write runs.csv themselves: `table` is read again after)."""
    import submitit  # optional: checked by the options
    tasks = chains(pending)
    executor = submitit.AutoExecutor(folder=os.path.join(folder, 'slurm'), cluster=opt.slurm_cluster)
    executor.update_parameters(**_slurm_parameters(opt, folder))
    count = len(tasks)
    jobs = executor.map_array(slurm_task, [opt] * count, [folder] * count, [command] * count, [pending] * count,
                              tasks)
    progress.write(f'submitted {count} tasks ({opt.slurm_cluster}): jobs {jobs[0].job_id} to {jobs[-1].job_id}, '
                   f'logs in {os.path.join(folder, "slurm")}')
    waiting, failed = dict(zip(jobs, tasks)), []
    while waiting:
        for job in [job for job in waiting if job.done()]:
            task = waiting.pop(job)
            try:
                _finished(task, job.result(), progress)
            except Exception as error:  # submitit's FailedJobError or UncompletedJobError
                failed.append(f'{task[-1].describe()} (job {job.job_id}, {job.state}, log {job.paths.stderr}): '
                              f'{str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__}')
                progress.write(f'failed: {failed[-1]}')
        progress.set_postfix_str(', '.join(f'{state} {number}' for state, number in
                                           sorted(Counter(job.state for job in waiting).items())))
        if waiting:
            time.sleep(POLL_SECONDS)
    if failed:
        raise UserError(f'{len(failed)} of {count} tasks failed: {"; ".join(failed)}; the others are in runs.csv: '
                        f'rerun the same command to run the failed ones')


LAUNCHERS = {'serial': serial, 'local': local, 'slurm': slurm}


def write_report(opt, folder: str, table) -> str:
    """summary.md and the plots from the rows of runs.csv; prints them and returns the summary."""
    summary = report.write_summary(folder, table.rows, f'Sweep {opt.experiment_class}/{opt.model_name}: '
                                   f'{opt.model_load} on {opt.segmentation_validation_loaders}')
    plots = report.write_plots(folder, table.rows)
    print(summary)
    print('files: ' + ', '.join([table.path, os.path.join(folder, report.SUMMARY_FILE), *plots]))
    return summary


def run_sweep(opt) -> str:
    """Run the tasks of `opt` whose runs runs.csv does not hold yet with its launcher, then write summary.md and the
    plots once every run has its rows (--report: only those); returns the sweep folder."""
    # seeded with the first seed here, then with each run's seed where its batches start
    runtime, folder = open_job(opt, opt.seeds[0])
    table = records.RunsTable(os.path.join(folder, records.RUNS_FILE), runner.rows_per_run(opt))
    if opt.report:
        if not table.rows:
            raise UserError(f'{table.path} holds no runs yet; run the sweep first')
        write_report(opt, folder, table)
        teardown_runtime(runtime)
        return folder
    command = records.claim_folder(folder, vars(opt), sweep_defaults(), on_gpu=runtime.device.type == 'cuda',
                                   record=False)
    runs = sweep_runs(opt.methods, opt.num_batches, opt.alpha_batch, opt.alpha_layer, opt.seeds)
    finished = table.finished()
    pending = [run for run in runs if run.key not in finished]
    print(f'sweep of {len(runs)} runs in {folder}: {len(runs) - len(pending)} done before, {len(pending)} to run',
          flush=True)
    if pending:
        with tqdm(total=len(pending), desc='sweep', unit='run') as progress:
            LAUNCHERS[opt.launcher](opt, runtime, folder, command, pending, progress, table)
        table.reload()  # a pool's or Slurm's processes wrote their rows themselves
    else:
        records.record_command(folder, command)
    missing = [run for run in runs if run.key not in table.finished()]
    if missing:
        raise UserError(f'{len(missing)} of {len(runs)} runs have no rows in {table.path} (the first: '
                        f'{missing[0].describe()}); rerun the same command to run them')
    write_report(opt, folder, table)
    teardown_runtime(runtime)
    return folder
