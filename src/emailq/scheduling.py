"""How one lease of up to ``n`` messages is shared between the lanes.

Critical mail takes every slot it can. The remaining slots go to the other lanes by smooth
weighted round robin (the algorithm nginx uses for upstreams): each slot, every lane that
still has ready mail gains its weight in credit, the richest lane takes the slot and pays
the sum of the weights in play. Credits persist between leases (the broker stores them), so
even one-message leases share fairly over time, and a lane with ready mail is never starved.

The Redis backend runs the same algorithm in ``lua/lease.lua``; the contract tests check
both against the invariants, and ``tests/test_scheduling.py`` checks this function itself.
"""

from collections.abc import Mapping

from emailq.lanes import LANE_ORDER, SHARED_LANES, Lane


def allot(
    n: int,
    ready: Mapping[Lane, int],
    weights: Mapping[Lane, int],
    credit: dict[Lane, int],
) -> dict[Lane, int]:
    """How many messages to take from each lane; updates ``credit`` in place."""
    take = dict.fromkeys(LANE_ORDER, 0)
    take[Lane.CRITICAL] = min(n, ready.get(Lane.CRITICAL, 0))
    slots = n - take[Lane.CRITICAL]
    while slots > 0:
        in_play = [lane for lane in SHARED_LANES if ready.get(lane, 0) > take[lane]]
        if not in_play:
            break
        total = sum(weights[lane] for lane in in_play)
        for lane in in_play:
            credit[lane] = credit.get(lane, 0) + weights[lane]
        # max() keeps the first of equals, and in_play is in lane order: ties go to the higher lane.
        best = max(in_play, key=lambda lane: credit[lane])
        credit[best] -= total
        take[best] += 1
        slots -= 1
    return take
