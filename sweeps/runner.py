"""Running a sweep's tasks with the jobs' own code: in each process the validation images are decoded once (and the
online methods' stream once), the adaptation batches once per seed, and each task (a method and seed) adapts once to
its largest number of batches, evaluated at every smaller one on the way."""
import os
import time

from tqdm import tqdm

from arguments import encoder_depth, online_settings_of
from dataloader import loaders
from dataloader.loaders import StartedLoader
from dataloader.stream import StreamPlan, batches_loader, stream_dataset
from evaluation.scoring import evaluate_model
from evaluation.stream import method_reset, score_stream
from evaluation.tables import results_dict
from experiment.runtime import seed_everything, setup_runtime
from jobs import loaded_model, validation_loaders_from
from models.adaptation import adapt_batchnorm, build_online_method, check_finite_statistics
from models.ubna import build_model
from sweeps import records
from sweeps.grid import NO_ADAPTATION, ONLINE, Run

VALIDATION_KEYS = ('input', 'label', 'domain')  # what evaluate_model reads of a batch


def decode_validation(started: list) -> list:
    """Every batch of the (name, StartedLoader) validation loaders, kept in memory: decoded once per sweep."""
    return [(name, [{key: batch[key] for key in VALIDATION_KEYS}
                    for batch in tqdm(loader, desc=f'decode {name}', total=len(loader), leave=False)])
            for name, loader in started]


class StreamBatches:
    """Every distinct batch of the online methods' stream, decoded once and replayed in each run's order (a mixed
    order draws with the run's seed, as evaluate.py draws with --sys-seed)."""

    def __init__(self, opt, device):
        self.opt = opt
        self.names = opt.segmentation_validation_loaders.split(',')
        dataset, self.lengths = stream_dataset(self.names, opt.online_stream_resize)
        self.distinct = StreamPlan(self.names, self.lengths, opt.segmentation_validation_batch_size).distinct_batches()
        self.loader = StartedLoader(batches_loader(dataset, self.distinct, opt.sys_num_workers,
                                                   device.type == 'cuda'))  # its workers start now
        self.batches = None

    def decode(self) -> None:
        self.batches = {tuple(indices): {key: batch[key] for key in VALIDATION_KEYS} for indices, batch in zip(
            self.distinct, tqdm(self.loader, desc='decode the stream', total=len(self.distinct), leave=False))}

    def plan(self, seed: int) -> StreamPlan:
        return StreamPlan(self.names, self.lengths, self.opt.segmentation_validation_batch_size,
                          self.opt.online_rounds, self.opt.online_order, seed)

    def replay(self, plan: StreamPlan):
        return (self.batches[tuple(indices)] for _, indices in plan.batches)


class SeedBatches:
    """The first adaptation batches of one seed, decoded at once right after seeding (as adapt.py draws them) and
    replayed for every method of that seed."""

    def __init__(self, opt, runtime, seed: int, num_batches: int):
        seed_everything(seed)
        self.seed = seed
        self.batches = list(tqdm(loaders.adaptation_batches(
            opt.adaptation_training_loaders.split(','), opt.adaptation_training_batch_size, num_batches,
            (opt.adaptation_resize_height, opt.adaptation_resize_width),
            (opt.adaptation_crop_height, opt.adaptation_crop_width), opt.sys_num_workers, runtime.device,
            runtime.memory_format, crop_at_offsets=opt.adaptation_crop_at_offsets,
            pixel_work=opt.adaptation_pixel_work),
            desc=f'decode adaptation batches, seed {seed}', total=num_batches, leave=False))


class Sweep:
    """The source model, the decoded validation images and runs.csv; runs chains of runs (see grid.chains)."""

    def __init__(self, opt, runtime, pending: list[Run], table: records.RunsTable, progress: tqdm):
        self.opt, self.runtime, self.table, self.progress = opt, runtime, table, progress
        self.batches_per_seed = {}  # the most adaptation batches a pending run of each seed needs
        for run in pending:
            self.batches_per_seed[run.seed] = max(self.batches_per_seed.get(run.seed, 0), run.num_batches)
        self.remaps = opt.segmentation_eval_remaps.split(',')
        plain = any(run.method not in ONLINE for run in pending)  # the online runs score the stream instead
        started = [(name, StartedLoader(loader))  # data first: its errors come first, its workers start now
                   for name, loader in (validation_loaders_from(opt, runtime.device) if plain else [])]
        self.stream = StreamBatches(opt, runtime.device) if any(run.method in ONLINE for run in pending) else None
        self.source = loaded_model(opt, runtime).state_dict()
        self.validation = decode_validation(started)
        if self.stream is not None:
            self.stream.decode()
        self.seed_batches = None
        self.model = None

    def _source_model(self):
        """The loaded model, built afresh as the jobs build it (so no setting of an earlier run, e.g. a BatchNorm
        momentum, carries over)."""
        model = build_model(self.opt.model_type, encoder_depth(self.opt), 'checkpoint', self.runtime.device,
                            self.runtime.memory_format)
        model.load_state_dict(self.source)
        return model

    def run_chain(self, chain: list[Run]) -> None:
        """From the source model: evaluate (as it is, or adapting online as evaluate.py does), or adapt to the
        chain's last N, evaluating at each N."""
        first = chain[0]
        self.progress.set_postfix_str(chain[-1].describe())
        self.model = self._source_model()
        if first.method == NO_ADAPTATION or first.method in ONLINE:
            seed_everything(first.seed)  # as evaluate.py seeds before its online method draws
            online = None if first.method == NO_ADAPTATION else build_online_method(
                first.method, self.model, reset=method_reset(self.opt.online_reset),
                **online_settings_of(self.opt, first.method))
            self._evaluate(first, 0.0, online)
            return
        largest = chain[-1].num_batches
        if self.seed_batches is None or self.seed_batches.seed != first.seed:
            self.seed_batches = None  # free the previous seed's batches first
            self.seed_batches = SeedBatches(self.opt, self.runtime, first.seed, self.batches_per_seed[first.seed])
        by_batches = {run.num_batches: run for run in chain}
        started, evaluating = time.perf_counter(), 0.0

        def after_batch(k):
            nonlocal evaluating
            if k + 1 in by_batches:
                self.runtime.synchronize()
                adapting = time.perf_counter() - started - evaluating
                check_finite_statistics(self.model)
                evaluating += self._evaluate(by_batches[k + 1], adapting)

        adapt_batchnorm(self.model, self.seed_batches.batches[:largest], first.method,
                        self.opt.adaptation_batchnorm_momentum, first.alpha_batch or 0.0, first.alpha_layer or 0.0,
                        show_progress=False, num_batches=largest, after_batch=after_batch,
                        autocast=self.runtime.autocast)

    def _evaluate(self, run: Run, adapting: float, online=None) -> float:
        """Score the model as it is now (adapting online over the stream with `online`, an online method, if given),
        record the run (its seconds: `adapting` plus this evaluation); returns the seconds of this evaluation."""
        started = time.perf_counter()
        skip = self.opt.segmentation_eval_skip_unused_class
        if online is None:
            scores, _ = evaluate_model(self.model, self.validation, self.remaps, self.runtime, show_progress=False,
                                       skip_unused_class=skip)
            stream_miou = None
        else:
            plan = self.stream.plan(run.seed)
            streamed = score_stream(self.model, plan, self.stream.replay(plan), self.remaps, self.runtime, online,
                                    self.opt.online_reset, show_progress=False, skip_unused_class=skip)
            scores, stream_miou = streamed.last_round(), {remap: m.miou() for remap, m in streamed.whole().items()}
        results = results_dict(self.opt.model_name, scores)
        seconds = time.perf_counter() - started
        rows = records.run_rows(run, results, adapting + seconds, stream_miou)
        self.table.add(run, rows)
        self.progress.write(f'{run.describe()}: ' + ', '.join(
            f'{row["domain"]}/{row["remap"]} mIoU {float(row["miou"] or "nan"):.3f}' for row in rows))
        self.progress.update()
        return seconds


class TaskLines:
    """A worker's stand-in for the progress bar: it keeps the lines of the runs of the current task."""

    def __init__(self):
        self.lines = []

    def write(self, line: str) -> None:
        self.lines.append(line)

    def set_postfix_str(self, text: str) -> None:
        pass

    def update(self) -> None:
        pass


_worker = None  # (key, Sweep) of this worker process: the data and model it decoded, for its next tasks


def run_task(opt, folder: str, command: dict, pending: list[Run], task: list[Run]) -> list[str]:
    """A task (one chain of grid.chains) in a worker process, whose first task loads the model and decodes the data
    for all `pending` runs and records sweep.json; returns the lines of its runs. Each task seeds itself, so its
    numbers do not depend on the tasks before it."""
    global _worker
    key = (folder, tuple(pending))
    if _worker is None or _worker[0] != key:
        _worker = None  # free the previous sweep's data first
        runtime = setup_runtime(opt.sys_cpu, opt.seeds[0], opt.sys_precision, opt.sys_memory_format)
        table = records.RunsTable(os.path.join(folder, records.RUNS_FILE), rows_per_run(opt))
        _worker = key, Sweep(opt, runtime, pending, table, TaskLines())
        records.record_command(folder, command)  # data and model have loaded: the folder's first output
    sweep = _worker[1]
    sweep.progress.lines = []
    sweep.run_chain(task)
    return sweep.progress.lines


def rows_per_run(opt) -> int:
    """The rows of a run in runs.csv: one per validation domain and remap."""
    domains = {loaders.validation_domain(name) for name in opt.segmentation_validation_loaders.split(',')}
    return len(domains) * len(opt.segmentation_eval_remaps.split(','))  # loaders of one domain score together
