import numpy as np
import pytest

from textgen import sampler

# One-hot logits scaled by 1e9: the right answer is exact.
ONE_HOT = np.eye(5, dtype=np.float32)[[3, 1]] * 1e9  # (2, 5): rows favour tokens 3 and 1
U = np.array([0.999, 0.001])  # uniforms at both ends of [0, 1)


def test_greedy_picks_the_argmax_of_each_row():
    assert sampler.greedy(ONE_HOT).tolist() == [3, 1]
    assert sampler.sample(ONE_HOT, U, temperature=0).tolist() == [3, 1]


def test_draw_follows_overwhelming_logits():
    assert sampler.sample(ONE_HOT, U, temperature=1.0).tolist() == [3, 1]


def test_draw_inverts_the_cdf_at_u():
    logits = np.log(np.array([[0.25, 0.25, 0.5]] * 4, np.float32))
    assert sampler.draw(logits, np.array([0.0, 0.24, 0.26, 0.99])).tolist() == [0, 0, 1, 2]


def test_temperature_divides_logits_once_in_float32():
    out = sampler.apply_temperature(np.array([[2.0, 4.0]]), 0.5)
    assert out.dtype == np.float32 and out.tolist() == [[4.0, 8.0]]
    with pytest.raises(ValueError):
        sampler.apply_temperature(ONE_HOT, 0.0)


def test_temperature_towards_zero_approaches_the_argmax():
    logits = np.array([[1.0, 1.5, 1.4, -2.0]], np.float32)
    probs = [sampler.softmax(sampler.apply_temperature(logits, t))[0, 1] for t in (1.0, 0.1, 0.01)]
    assert probs[0] < probs[1] < probs[2] and probs[2] > 0.9999


def test_draw_frequencies_match_softmax():
    logits = np.log(np.array([[0.1, 0.2, 0.7]], np.float32))
    streams = sampler.Streams(7, 1)
    counts = np.bincount([sampler.draw(logits, streams.uniform())[0] for _ in range(4000)], minlength=3)
    np.testing.assert_allclose(counts / 4000, [0.1, 0.2, 0.7], atol=0.03)


def test_top_k_1_equals_greedy_whatever_the_draw():
    logits = np.random.default_rng(0).normal(size=(6, 30)).astype(np.float32)
    for u in (0.0, 0.5, 0.999):
        assert (sampler.sample(logits, np.full(6, u), top_k=1) == sampler.greedy(logits)).all()


def test_top_k_keeps_exactly_the_k_largest():
    logits = np.array([[0.1, 3.0, -1.0, 2.0, 0.5]], np.float32)
    kept = np.isfinite(sampler.filter_top_k(logits, 2))
    assert kept.tolist() == [[False, True, False, True, False]]
    assert sampler.filter_top_k(logits, 5) is logits  # k >= vocab changes nothing


def test_top_p_keeps_the_smallest_set_reaching_p():
    logits = np.log(np.array([[0.15, 0.5, 0.05, 0.3]], np.float32))
    kept = lambda p: np.isfinite(sampler.filter_top_p(logits, p))[0].tolist()  # noqa: E731
    assert kept(0.5) == [False, True, False, False]
    assert kept(0.79) == [False, True, False, True]
    assert kept(0.81) == [True, True, False, True]
    assert kept(0.01) == [False, True, False, False]  # the most likely token always stays


def test_top_p_1_changes_nothing():
    logits = np.random.default_rng(1).normal(size=(3, 40)).astype(np.float32)
    assert sampler.filter_top_p(logits, 1.0) is logits
    u = np.array([0.1, 0.5, 0.9])
    assert (sampler.sample(logits, u, top_p=1.0) == sampler.sample(logits, u)).all()


def test_filtering_comes_after_temperature():
    logits = np.log(np.array([[0.6, 0.3, 0.1]], np.float32))
    u = np.array([0.99])
    assert sampler.sample(logits, u, temperature=1.0, top_p=0.6).tolist() == [0]  # nucleus = {0}
    assert sampler.sample(logits, u, temperature=10.0, top_p=0.6).tolist() == [1]  # flatter: {0, 1}


def test_repetition_penalty_is_ctrls_divide_positive_multiply_negative():
    logits = np.array([[2.0, -2.0, 1.0, 3.0]], np.float32)
    recent = np.array([[0, 1, 0, -1]])  # token 0 twice (counts once), token 1, one empty slot
    assert sampler.repetition_penalty(logits, recent, 2.0).tolist() == [[1.0, -4.0, 1.0, 3.0]]
    assert sampler.repetition_penalty(logits, recent, 1.0).tolist() == logits.tolist()


def test_repetition_penalty_comes_before_greedy_choice():
    logits = np.array([[3.0, 2.0]], np.float32)
    assert sampler.sample(logits, U[:1], temperature=0, penalty=2.0, recent=np.array([[0]])).tolist() == [1]


def test_stream_i_is_the_same_whatever_the_batch_size_and_block():
    alone, batch = sampler.Streams(9, 1), sampler.Streams(9, 4, block=7)
    draws_alone = np.array([alone.uniform()[0] for _ in range(300)])
    draws_batch = np.array([batch.uniform() for _ in range(300)])  # (300, 4)
    assert (draws_batch[:, 0] == draws_alone).all()
    assert (draws_batch[:, 2] == np.random.default_rng([9, 2]).random(300)).all()
    assert not (draws_batch[:, 1] == draws_batch[:, 0]).any()


@pytest.mark.parametrize("seed", [0, 2**32, 2**63 - 1])
def test_every_allowed_seed_gives_reproducible_distinct_streams(seed):
    a, b = sampler.Streams(seed, 3), sampler.Streams(seed, 3)
    draws = np.array([a.uniform() for _ in range(10)])  # (10, 3)
    assert (draws == np.array([b.uniform() for _ in range(10)])).all()
    assert len({tuple(draws[:, i]) for i in range(3)}) == 3  # (seed, i) differ by i
    assert not (draws == np.array([sampler.Streams(seed ^ 1, 3).uniform() for _ in range(10)])).all()


def feed_all(stop_text, pieces):
    shown = [stop_text.feed(p) for p in pieces]
    return shown + [stop_text.flush()]


def test_stop_string_across_pieces_is_held_back_and_never_shown():
    stop = sampler.StopText(["END"])
    shown = feed_all(stop, ["ab", "cE", "N", "D", "more"])
    assert shown == ["ab", "c", "", "", "", ""] and stop.done


def test_held_back_text_is_released_when_it_is_not_a_stop():
    stop = sampler.StopText(["END"])
    assert feed_all(stop, ["xE", "Nd", "!"]) == ["x", "ENd", "!", ""]
    assert not stop.done


def test_earliest_of_several_stops_wins():
    assert "".join(feed_all(sampler.StopText(["\n\n", "C:"]), ["A: hi C:", " x\n\n"])) == "A: hi "


def test_max_chars_cuts_exactly():
    stop = sampler.StopText(max_chars=5)
    assert feed_all(stop, ["abc", "def", "ghi"]) == ["abc", "de", "", ""]


def test_extreme_temperatures_stay_finite():
    logits = np.array([[1.0, 3.0, -np.inf, 2.0]], np.float32)  # token 2 filtered out
    for tiny in (1e-45, 1e-300):
        assert sampler.sample(logits, np.array([0.999]), temperature=tiny).tolist() == [1]
    picks = {int(sampler.sample(logits, np.array([u]), temperature=1e300)[0]) for u in np.linspace(0, 0.999, 50)}
    assert picks == {0, 1, 3}  # flat over the allowed tokens, never the filtered one


# Vocabulary of four tokens: 0 "the" (word at both ends), 1 " cat" (ends with one),
# 2 "," (neither), 3 "Dog" (word at both ends).
ENDS_WORD = np.array([True, True, False, True])
STARTS_WORD = np.array([True, False, False, True])


def test_glue_rule_refuses_a_word_start_after_a_word_end():
    logits = np.eye(4, dtype=np.float32)[[3, 3, 0]] * 1e9  # (3, 4): every row favours a word start
    previous = np.array([0, 2, 1])  # after "the", after ",", after " cat"
    out = sampler.forbid_glue(logits, previous, ENDS_WORD, STARTS_WORD)
    assert np.isneginf(out[[0, 0, 2, 2], [0, 3, 0, 3]]).all()  # refused after a word end
    assert out[1].tolist() == logits[1].tolist()  # after punctuation anything goes
    assert out[0, 1] == 0 and out[0, 2] == 0  # " cat" and "," stay
    assert sampler.greedy(out).tolist() == [1, 3, 1]  # the best token left: " cat" (a tie with ",")


def test_glue_rule_leaves_a_row_alone_when_it_would_refuse_everything():
    logits = np.array([[0.0, -np.inf, -np.inf, 1e9]], np.float32)  # only word starts left
    out = sampler.forbid_glue(logits, np.array([0]), ENDS_WORD, STARTS_WORD)
    assert out.tolist() == logits.tolist()
