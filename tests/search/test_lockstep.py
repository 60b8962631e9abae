"""Lockstep threads: waiting requests run as one batch, in job order; errors reach their jobs."""

import pytest

from cola_lightning.search.lockstep import Lockstep


def test_waiting_requests_run_together_in_job_order_and_answers_go_back():
    batches = []

    def execute(requests):
        batches.append(list(requests))
        return [r * 10 for r in requests]

    lockstep = Lockstep(execute)

    def job(index, calls):
        return [lockstep.submit((index, call)) for call in range(calls)]

    results = lockstep.run([lambda i=i, n=n: job(i, n) for i, n in enumerate([2, 3, 1])])
    assert results == [[(0, 0) * 10, (0, 1) * 10], [(1, c) * 10 for c in range(3)], [(2, 0) * 10]]
    # every unfinished job waits before a batch runs: 3 jobs, then 2, then 1
    assert batches == [[(0, 0), (1, 0), (2, 0)], [(0, 1), (1, 1)], [(1, 2)]]


def test_a_job_that_raises_lets_the_others_finish_and_raises_from_run():
    lockstep = Lockstep(lambda requests: requests)

    def failing():
        lockstep.submit("first")
        raise RuntimeError("job 0 failed")

    def steady():
        return [lockstep.submit(step) for step in range(4)]

    with pytest.raises(RuntimeError, match="job 0 failed"):
        lockstep.run([failing, steady])


def test_an_error_in_the_batch_reaches_every_waiting_job():
    def execute(requests):
        raise ValueError("the batch failed")

    lockstep = Lockstep(execute)
    caught = []

    def job():
        try:
            lockstep.submit("x")
        except ValueError as error:
            caught.append(str(error))
        return len(caught)

    lockstep.run([job, job])
    assert caught == ["the batch failed", "the batch failed"]
