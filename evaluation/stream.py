"""Scoring a stream of domains (dataloader.stream): every (round, position) pass counted on its own, the resets at
domain and round boundaries, and the merges the reports read (the last round by domain, the whole stream)."""
import torch
from tqdm import tqdm

from evaluation.metrics import REMAPS, ConfusionMatrix
from evaluation.scoring import score_batch

STREAM_RESETS = ('domain', 'round')  # the method runs continual; the stream resets it at these boundaries


def method_reset(reset: str | None) -> str | None:
    """The reset an online method is built with: a stream-level reset leaves the method continual."""
    return 'continual' if reset in STREAM_RESETS else reset


def _boundary(reset: str | None, previous, cell) -> bool:
    """Whether the stream resets the method before a batch of `cell` that follows one of `previous`."""
    if reset == 'domain':
        return cell != previous
    return reset == 'round' and cell.round != previous.round


class StreamScores:
    """{remap: ConfusionMatrix} per cell of a plan, the dataset domain and image count of each, and the strips."""

    def __init__(self, plan, remaps, device):
        self.plan = plan
        self.cells = [{remap: ConfusionMatrix(len(REMAPS[remap]), device) for remap in remaps} for _ in plan.cells]
        self.domains = [None] * len(plan.cells)
        self.images = [0] * len(plan.cells)
        self.strips = {}

    def merged(self, indices) -> dict:
        """{remap: ConfusionMatrix} of the cells `indices` together."""
        total = {}
        for index in indices:
            for remap, matrix in self.cells[index].items():
                total.setdefault(remap, ConfusionMatrix(matrix.num_classes, matrix.matrix.device)).add(matrix)
        return total

    def last_round(self) -> dict:
        """{domain: {remap: ConfusionMatrix}} of the last round, its passes of one domain merged (plain scores)."""
        last = self.plan.cells[-1].round
        indices = [i for i, cell in enumerate(self.plan.cells) if cell.round == last]
        return {domain: self.merged([i for i in indices if self.domains[i] == domain])
                for domain in dict.fromkeys(self.domains[i] for i in indices)}

    def whole(self) -> dict:
        """{remap: ConfusionMatrix} over every cell: the stream's mIoU."""
        return self.merged(range(len(self.cells)))


@torch.no_grad()
def score_stream(model, plan, batches, remaps, runtime, online=None, reset: str | None = None, num_images=0,
                 show_progress=True, skip_unused_class=False, timer=None) -> StreamScores:
    """Run the model in eval mode over a stream: `batches` yields the plan's batches in its order (a stream loader,
    or a replay of decoded batches). online: an online method (scoring.AgainstNone or models.adaptation) that the
    stream resets (online.reset()) as `reset` says ('domain', 'round'; other resets are the method's own).
    At most `num_images` strips per dataset domain."""
    was_training = model.training
    model.eval()
    scores = StreamScores(plan, remaps, runtime.device)
    if timer is not None:
        batches = timer.wrap(batches, count=lambda batch: len(batch['input']))
    previous = None
    for batch, (index, _) in zip(tqdm(batches, desc='stream', total=len(plan), leave=False,
                                      disable=not show_progress), plan.batches):
        cell = plan.cells[index]
        if online is not None and previous is not None and _boundary(reset, previous, cell):
            online.reset()
        previous = cell
        scores.domains[index] = domain = batch['domain'][0]
        scores.images[index] += len(batch['input'])
        score_batch(model if online is None else online, batch, scores.cells[index], runtime, skip_unused_class,
                    scores.strips.setdefault(domain, []), num_images)
    model.train(was_training)
    return scores
