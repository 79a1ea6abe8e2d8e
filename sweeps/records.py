"""What a sweep keeps in its folder: sweep.json (the command that made it) and runs.csv (one row per run and
validation domain/remap), so that a rerun skips what is done and never mixes in runs of other settings."""
import csv
import fcntl
import io
import json
import math
import os
from collections import Counter

from dataloader.labels import CLASS_NAMES
from dataloader.loaders import pixel_work_on_device
from errors import UserError
from experiment.folder import write_json, write_text
from sweeps.grid import SETTINGS, Run

COMMAND_FILE = 'sweep.json'
RUNS_FILE = 'runs.csv'
LIST_OPTIONS = ('methods', 'num_batches', 'alpha_batch', 'alpha_layer', 'seeds')  # may change between reruns
# may change too: the main process draws adaptation's randomness, and a task seeds itself, so no number moves
FREE_OPTIONS = ('sys_num_workers', 'launcher', 'jobs', 'report', 'slurm_partition', 'slurm_time',
                'slurm_gpus_per_task', 'slurm_cpus_per_task', 'slurm_mem', 'slurm_array_parallelism', 'slurm_extra',
                'slurm_cluster')
DERIVED_OPTIONS = {  # options no flag sets directly, by what the user gave
    'online_stream_resize': 'the online stream\'s size (--segmentation-validation-resize-height/-width as given)'}
UNRECORDED_VALUES = {'adaptation_pixel_work': 'workers'}  # what runs did before an option existed, if not its default
IOU_COLUMNS = tuple('iou_' + name.replace(' ', '_') for name in CLASS_NAMES)
OLD_COLUMNS = (*SETTINGS, 'domain', 'remap', 'classes', 'miou', 'mean_accuracy', 'seconds', *IOU_COLUMNS)
COLUMNS = (*OLD_COLUMNS, 'stream_miou')  # an online run's mIoU over its whole stream (per remap); '' for the others


def claim_folder(folder: str, options: dict, defaults: dict, on_gpu: bool, record: bool = True) -> dict:
    """Refuse a folder whose runs were made with other settings than `options` (the lists and the worker count
    aside); record them (record False: return them, for record_command once the sweep's own checks have passed).
    An option that its sweep.json lacks came to the tool after those runs, which had its value in `defaults` (or in
    UNRECORDED_VALUES). The pixel work is compared and recorded as done here (see pixel_work_as_done)."""
    options = pixel_work_as_done(options, on_gpu)
    path = os.path.join(folder, COMMAND_FILE)
    if os.path.isfile(path):
        with open(path) as file:
            previous = pixel_work_as_done({**defaults, **UNRECORDED_VALUES, **json.load(file)}, on_gpu)
        for key in sorted((previous.keys() | options.keys()) - set(LIST_OPTIONS) - set(FREE_OPTIONS)):
            if previous.get(key) != options.get(key):
                setting = DERIVED_OPTIONS.get(key, f'--{key.replace("_", "-")}')
                raise UserError(f'the sweep folder {folder} holds runs made with {setting} '
                                f'{previous.get(key)!r}, not {options.get(key)!r}; rerun with the same settings or '
                                f'choose another --model-name')
    else:
        for other in ('opt.json', RUNS_FILE):  # a job's folder, or runs whose command is unknown
            if os.path.exists(os.path.join(folder, other)):
                raise UserError(f'the folder {folder} holds {other} but no {COMMAND_FILE}, so it is not a sweep of '
                                f'this command; choose another --experiment-class/--model-name')
    if record:
        record_command(folder, options)
    return options


def record_command(folder: str, options: dict) -> None:
    """sweep.json: the options of the folder's runs, as claim_folder returned them."""
    write_json(os.path.join(folder, COMMAND_FILE), options)


def pixel_work_as_done(options: dict, on_gpu: bool) -> dict:
    """'auto' as the choice it makes here: the workers on a CPU, the device on a GPU, whose hues differ. (A folder
    that recorded 'auto' itself, as one release did, is taken as made on a machine like this one.)"""
    on_device = pixel_work_on_device(options['adaptation_pixel_work'], on_gpu)
    return {**options, 'adaptation_pixel_work': 'device' if on_device else 'workers'}


def _number(value) -> str:
    """A float exactly as Python reads it back; '' for a missing value (NaN)."""
    return '' if value is None or (isinstance(value, float) and math.isnan(value)) else repr(float(value))


def run_rows(run: Run, results: dict, seconds: float, stream_miou: dict | None = None) -> list[dict]:
    """The runs.csv rows of one run from evaluation.tables.results_dict: one per validation domain and remap (an
    online run's: the stream's last round), with the stream's mIoU of the remap ({remap: mIoU}) if given."""
    rows = []
    for domain, remaps in results['domains'].items():
        for remap, scores in remaps.items():
            row = dict(zip(SETTINGS, run.key), domain=domain, remap=remap, classes=str(len(scores['iou'])),
                       miou=_number(scores['miou']), mean_accuracy=_number(scores['mean_accuracy']),
                       seconds=f'{seconds:.3f}', stream_miou=_number(stream_miou[remap]) if stream_miou else '')
            row.update(('iou_' + name.replace(' ', '_'), _number(iou)) for name, iou in scores['iou'].items())
            rows.append(row)
    return rows


def row_key(row: dict) -> tuple:
    """The settings of the run a runs.csv row belongs to, as Run.key gives them."""
    return tuple(row[name] for name in SETTINGS)


class RunsTable:
    """runs.csv in memory; each finished run rewrites the file whole (atomically), so a kill leaves no half row, and
    under an flock of runs.csv.lock after reading it again, so that tasks running at once keep each other's rows."""

    def __init__(self, path: str, rows_per_run: int):
        self.path = path
        self.rows_per_run = rows_per_run
        self.rows = self._read()

    def reload(self) -> None:
        """Read runs.csv again (other processes may have added runs)."""
        self.rows = self._read()

    def _read(self) -> list[dict]:
        if not os.path.exists(self.path):
            return []
        with open(self.path, newline='') as file:
            reader = csv.DictReader(file)
            if tuple(reader.fieldnames or ()) not in (COLUMNS, OLD_COLUMNS):  # older sweeps wrote no stream_miou
                raise UserError(f'{self.path} does not have the columns a sweep writes; move it away to start over')
            return [{**row, 'stream_miou': row.get('stream_miou', '')} for row in reader]

    def finished(self) -> set[tuple]:
        """The keys of runs with all their rows (one per validation domain and remap)."""
        return {key for key, count in Counter(map(row_key, self.rows)).items() if count == self.rows_per_run}

    def add(self, run: Run, rows: list[dict]) -> None:
        """Replace the rows of `run` (a partial set from an edited file) by `rows` and rewrite runs.csv."""
        with open(self.path + '.lock', 'a') as lock:  # the folder's .lock is the sweep's, held by its main process
            fcntl.flock(lock, fcntl.LOCK_EX)
            self.rows = [row for row in self._read() if row_key(row) != run.key] + rows
            text = io.StringIO(newline='')
            writer = csv.DictWriter(text, COLUMNS, restval='')
            writer.writeheader()
            writer.writerows(self.rows)
            write_text(self.path, text.getvalue())
