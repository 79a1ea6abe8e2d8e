#!/usr/bin/env python3
"""Evaluate a checkpoint: mIoU and mean class accuracy on the segmentation validation sets (spec §8); with
--online-method, adapting online over a stream of those domains, in rounds."""
import copy
import os

from arguments import online_settings_given, parse_evaluation_arguments, run_seed
from dataloader.loaders import StartedLoader
from dataloader.transforms import to_network_input
from errors import run_cli
from evaluation.pictures import save_strips
from evaluation.scoring import AgainstNone, evaluate_model
from evaluation.stream import STREAM_RESETS, method_reset, score_stream
from evaluation.stream_report import stream_results, stream_table, write_stream_plot
from evaluation.tables import class_table, results_dict, summary_table
from experiment.folder import write_json
from experiment.runtime import LoopTimer, exit_process, teardown_runtime
from jobs import loaded_model, open_job, record_options, stream_from, validation_loaders_from


def plain(opt, runtime) -> tuple[dict, dict, None]:
    """Score the loaded model on each validation loader: (results, strips, no stream)."""
    validation = [(name, StartedLoader(loader))  # data first: its errors come first, and its workers start now
                  for name, loader in validation_loaders_from(opt, runtime.device)]
    model = loaded_model(opt, runtime)
    print(f'Evaluating {opt.model_load} on {opt.segmentation_validation_loaders}', flush=True)
    timer = LoopTimer(runtime)
    scores, strips = evaluate_model(model, validation, opt.segmentation_eval_remaps.split(','), runtime,
                                    opt.segmentation_eval_num_images,
                                    skip_unused_class=opt.segmentation_eval_skip_unused_class, timer=timer)
    print(timer.summary('evaluate'), flush=True)
    return _tabled(opt, scores), strips, None


def streamed(opt, runtime) -> tuple[dict, dict, object]:
    """Adapt online over the stream and score each (round, position) pass: (results, strips, the stream's scores)."""
    plan, loader = stream_from(opt, runtime.device)
    batches = StartedLoader(loader)  # data first: its errors come first, and its workers start now
    model = loaded_model(opt, runtime)
    with runtime.autocast():  # eata's Fisher passes run as the stream's will
        online = AgainstNone(opt.online_method, model, method_reset(opt.online_reset), **online_settings_given(opt),
                             **fisher_batches(opt, runtime))
    print(f'Evaluating {opt.model_load} on {opt.segmentation_validation_loaders}, adapting online with '
          f'{opt.online_method}' + ('' if len(plan.cells) == 1 else f' ({opt.online_rounds} rounds, '
                                                                     f'{opt.online_order} order)'), flush=True)
    timer = LoopTimer(runtime)
    scores = score_stream(model, plan, batches, opt.segmentation_eval_remaps.split(','), runtime, online,
                          opt.online_reset, opt.segmentation_eval_num_images,
                          skip_unused_class=opt.segmentation_eval_skip_unused_class, timer=timer)
    print(timer.summary('evaluate'), flush=True)
    print(online.summary(), flush=True)
    results = _tabled(opt, scores.last_round())
    report = online.report()
    if opt.online_reset in STREAM_RESETS:  # the method ran continual; the stream reset it
        report['settings'] = {**report['settings'], 'reset': opt.online_reset}
    results['online'] = {**report, 'rounds': opt.online_rounds, 'order': opt.online_order, **stream_results(scores)}
    print(stream_table(scores))
    return results, scores.strips, scores


def fisher_batches(opt, runtime) -> dict:
    """{'fisher_batches': network inputs of every image of --online-fisher-loaders} if given, else {}."""
    if opt.online_fisher_loaders is None:
        return {}
    options = copy.copy(opt)
    options.segmentation_validation_loaders = opt.online_fisher_loaders
    return {'fisher_batches': (to_network_input(batch['input'], runtime.device, runtime.memory_format)
                               for _, loader in validation_loaders_from(options, runtime.device) for batch in loader)}


def _tabled(opt, scores) -> dict:
    """Print the summary and per-class tables of {domain: {remap: ConfusionMatrix}}; returns results.json's dict."""
    print(summary_table(opt.model_name, scores))
    print(class_table(scores))
    return results_dict(opt.model_name, scores)


def main(argv=None) -> dict:
    opt = parse_evaluation_arguments(argv)
    runtime, folder = open_job(opt, run_seed(opt))
    results, strips, stream = plain(opt, runtime) if opt.online_method == 'none' else streamed(opt, runtime)
    record_options(opt, runtime, folder)  # every check has passed: opt.json, then the results it describes
    write_json(os.path.join(folder, 'results.json'), results)
    if stream is not None:
        write_stream_plot(folder, stream)
    save_strips(folder, strips)
    teardown_runtime(runtime)
    return results


if __name__ == '__main__':
    exit_process(run_cli(main))
