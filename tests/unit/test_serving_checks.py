"""What a Serving check's result makes the condition say: a wrong answer at once, no answer only at the
third check in a row without one."""

from __future__ import annotations

from voxtral_operator.autoscale.loop import NOT_ANSWERING, SERVING_FAILURES_TO_REPORT, ServingDebounce

KEY = ("speech", "asr")
OTHER = ("speech", "other")
ANSWERING = (True, "Answering", "GET /v1/models through the Service: 401")
TIMEOUT = (False, NOT_ANSWERING, "GET http://10.96.0.10:8000/v1/models: TimeoutError")
LEAKY = (False, "AuthNotEnforced", "the Service answers /v1 without an API key")


def test_no_answer_is_told_at_the_third_check_in_a_row_and_kept_after() -> None:
    debounce = ServingDebounce()
    assert debounce.observe(KEY, ANSWERING) == ANSWERING
    told = [debounce.observe(KEY, TIMEOUT) for _ in range(SERVING_FAILURES_TO_REPORT + 2)]
    assert SERVING_FAILURES_TO_REPORT == 3
    assert told[:2] == [None, None], told
    expected = (False, NOT_ANSWERING, f"{TIMEOUT[2]} (3 checks in a row)")
    # The same words each time after: the reconciler sees no change, so status is not rewritten.
    assert told[2:] == [expected] * 3, told


def test_one_slow_answer_between_good_ones_is_never_told() -> None:
    debounce = ServingDebounce()
    results = [ANSWERING, TIMEOUT, ANSWERING, TIMEOUT, TIMEOUT, ANSWERING, TIMEOUT]
    told = [debounce.observe(KEY, result) for result in results]
    assert told == [ANSWERING, None, ANSWERING, None, None, ANSWERING, None], told


def test_a_wrong_answer_is_told_at_once_and_ends_a_run_without_answers() -> None:
    debounce = ServingDebounce()
    assert debounce.observe(KEY, TIMEOUT) is None
    assert debounce.observe(KEY, TIMEOUT) is None
    assert debounce.observe(KEY, LEAKY) == LEAKY
    assert debounce.observe(KEY, TIMEOUT) is None, "the run starts again after an answer"


def test_runs_are_counted_per_endpoint_and_forgotten() -> None:
    debounce = ServingDebounce()
    for _ in range(2):
        assert debounce.observe(KEY, TIMEOUT) is None
    assert debounce.observe(OTHER, TIMEOUT) is None, "another endpoint's run is its own"
    debounce.forget(KEY)  # not ready, or gone: the run starts again
    assert debounce.observe(KEY, TIMEOUT) is None
