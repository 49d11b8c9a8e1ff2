"""Tests of BatchLoader: in-memory batches, on-device normalization, seeded and resumable shuffling."""

import io

import pytest
import torch

from data import BatchLoader, SplitData, normalize
from glora.errors import UserError


def _split(n=10):
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, 3, 4, 4), dtype=torch.uint8, generator=g), torch.arange(n)


def test_loader_batches_in_order_normalized():
    images, labels = _split()
    loader = BatchLoader(images, labels, batch_size=4)
    batches = list(loader)
    assert len(loader) == len(batches) == 3
    assert [y.tolist() for _, y in batches] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert torch.equal(torch.cat([x for x, _ in batches]), normalize(images))
    assert batches[0][0].dtype == torch.float32
    dropped = BatchLoader(images, labels, batch_size=4, drop_last=True, dtype=torch.bfloat16)
    assert len(dropped) == 2 and [len(y) for _, y in dropped] == [4, 4]
    assert next(iter(dropped))[0].dtype == torch.bfloat16


def test_loader_custom_mean_std_and_move():
    images, labels = _split()
    loader = BatchLoader(images, labels, batch_size=10, mean=(0.5,) * 3, std=(0.25,) * 3).to("cpu")
    assert loader.device == torch.device("cpu")
    assert torch.equal(next(iter(loader))[0], (images.float() / 255 - 0.5) / 0.25)


def _epochs(loader, n):
    return [[y.tolist() for _, y in loader] for _ in range(n)]


def test_shuffle_is_seeded_and_covers_every_sample():
    images, labels = _split(23)
    runs = [_epochs(BatchLoader(images, labels, batch_size=5, shuffle=True, seed=s), 3) for s in (7, 7, 8)]
    assert runs[0] == runs[1] and runs[0] != runs[2]
    assert runs[0][0] != runs[0][1]  # a new order every epoch
    for epoch in runs[0]:
        assert sorted(sum(epoch, [])) == list(range(23))


def test_shuffle_resumes_exactly_mid_epoch_and_between_epochs(tmp_path):
    images, labels = _split(23)
    reference = _epochs(BatchLoader(images, labels, batch_size=5, shuffle=True, seed=3), 4)

    loader = BatchLoader(images, labels, batch_size=5, shuffle=True, seed=3)
    _epochs(loader, 1)
    between = loader.state_dict()
    it = iter(loader)
    seen = [next(it)[1].tolist(), next(it)[1].tolist()]
    buf = io.BytesIO()
    torch.save(loader.state_dict(), buf)  # as a checkpoint would
    buf.seek(0)
    mid = torch.load(buf, weights_only=True)
    assert mid["batches_done"] == 2 and seen == reference[1][:2]

    resumed = BatchLoader(images, labels, batch_size=5, shuffle=True, seed=999)
    resumed.load_state_dict(mid)
    assert [y.tolist() for _, y in resumed] == reference[1][2:]
    assert _epochs(resumed, 2) == reference[2:]

    again = BatchLoader(images, labels, batch_size=5, shuffle=True)
    again.load_state_dict(between)
    assert _epochs(again, 3) == reference[1:]


def test_split_data_loader_serves_its_split():
    images, labels = _split(12)
    split = SplitData(images, labels % 3, num_classes=3, task="t", split="train800")
    loader = split.loader(batch_size=5, shuffle=True, seed=1)
    order = torch.randperm(12, generator=torch.Generator().manual_seed(1))
    x, y = next(iter(loader))
    assert torch.equal(x, normalize(images[order[:5]])) and torch.equal(y, labels[order[:5]] % 3)
    assert len(loader) == 3 and len(split) == 12


def test_bad_batch_size_is_a_user_error():
    with pytest.raises(UserError, match="batch_size must be a positive integer"):
        BatchLoader(*_split(), batch_size=0)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_loader_on_cuda_matches_cpu_bitwise():
    images, labels = _split(37)
    cpu = BatchLoader(images, labels, batch_size=8, shuffle=True, seed=5)
    gpu = BatchLoader(images, labels, batch_size=8, shuffle=True, seed=5).to("cuda")
    streamed = BatchLoader(images, labels, batch_size=8, shuffle=True, seed=5, device="cuda")  # split stays on host
    for (xc, yc), (xg, yg), (xs, ys) in zip(cpu, gpu, streamed):
        assert xg.is_cuda and torch.equal(xg.cpu(), xc) and torch.equal(yg.cpu(), yc)
        assert xs.is_cuda and torch.equal(xs.cpu(), xc) and torch.equal(ys.cpu(), yc)
    assert not streamed.images.is_cuda
