import numpy as np
import pytest

from textgen import sampler

# One-hot logits scaled by 1e9: the right answer is exact.
ONE_HOT = np.eye(5, dtype=np.float32)[[3, 1]] * 1e9  # (2, 5): rows favour tokens 3 and 1


def test_greedy_picks_the_argmax_of_each_row():
    assert sampler.greedy(ONE_HOT).tolist() == [3, 1]
    assert sampler.sample(ONE_HOT, sampler.sample_streams(0, 2), temperature=0).tolist() == [3, 1]


def test_draw_follows_overwhelming_logits():
    assert sampler.sample(ONE_HOT, sampler.sample_streams(0, 2), temperature=1.0).tolist() == [3, 1]


def test_temperature_divides_logits_once_in_float32():
    out = sampler.apply_temperature(np.array([[2.0, 4.0]]), 0.5)
    assert out.dtype == np.float32 and out.tolist() == [[4.0, 8.0]]
    with pytest.raises(ValueError):
        sampler.apply_temperature(ONE_HOT, 0.0)


def test_draw_frequencies_match_softmax():
    logits = np.log(np.array([[0.1, 0.2, 0.7]], np.float32))
    streams = sampler.sample_streams(7, 1)
    counts = np.bincount([sampler.draw(logits, streams)[0] for _ in range(4000)], minlength=3)
    np.testing.assert_allclose(counts / 4000, [0.1, 0.2, 0.7], atol=0.03)


def test_stream_i_is_the_same_whatever_the_batch_size():
    logits = np.zeros((4, 50), np.float32)
    alone = [sampler.draw(logits[:1], sampler.sample_streams(9, 1))[0] for _ in range(1)]
    batch = sampler.draw(logits, sampler.sample_streams(9, 4))
    assert batch[0] == alone[0]
    assert sampler.sample_streams(9, 4)[2].random() == sampler.sample_streams(9, 3)[2].random()
