"""chatd.bench.lossy: its pure counting and its options (its run against a live daemon: tests/test_delivery_e2e.py)."""

from __future__ import annotations

import argparse

from twisted.trial.unittest import SynchronousTestCase

from chatd.bench import lossy
from chatd.bench.lossy import Shown, count_figures, loss_rates, percentile


class CountTests(SynchronousTestCase):
    def test_exactly_once_in_order(self) -> None:
        names = ["a", "b"]
        sent_at = {("a", 0): 1.0, ("a", 1): 2.0, ("b", 0): 1.0, ("b", 1): 2.0}
        shown = {
            "a": Shown([("b", 0, 1), ("b", 1, 3)], {("b", 0): [1.5], ("b", 1): [2.25]}),
            "b": Shown([("a", 0, 2), ("a", 1, 4)], {("a", 0): [1.5], ("a", 1): [2.5]}),
        }
        delivered, duplicates, violations, latencies = count_figures(names, 2, sent_at, shown)
        self.assertEqual((delivered, duplicates, violations), (4, 0, 0))
        self.assertEqual(sorted(latencies), [0.25, 0.5, 0.5, 0.5])

    def test_loss_duplicates_and_disorder_are_counted(self) -> None:
        names = ["a", "b"]
        sent_at = {("a", 0): 0.0, ("a", 1): 0.0, ("b", 0): 0.0, ("b", 1): 0.0}
        shown = {
            # b's 1 shown twice, and before b's 0 in room order.
            "a": Shown([("b", 1, 5), ("b", 0, 3), ("b", 1, 5)], {("b", 1): [1.0, 2.0], ("b", 0): [1.5]}),
            # a's 1 never shown.
            "b": Shown([("a", 0, 2)], {("a", 0): [1.0]}),
        }
        delivered, duplicates, violations, _ = count_figures(names, 2, sent_at, shown)
        self.assertEqual((delivered, duplicates, violations), (3, 1, 2))

    def test_percentile(self) -> None:
        self.assertIsNone(percentile([], 0.5))
        self.assertEqual(percentile([3.0], 0.99), 3.0)
        values = [float(v) for v in range(1, 101)]
        self.assertEqual(percentile(values, 0.5), 50.0)
        self.assertEqual(percentile(values, 0.99), 99.0)


class OptionTests(SynchronousTestCase):
    def test_loss_rates(self) -> None:
        self.assertEqual(loss_rates("0,0.05,0.2"), [0.0, 0.05, 0.2])
        for bad in ("", "1", "-0.1", "0,2"):
            self.assertRaises(argparse.ArgumentTypeError, loss_rates, bad)

    def test_defaults(self) -> None:
        arguments = lossy.make_parser().parse_args([])
        self.assertEqual((arguments.members, arguments.messages, arguments.loss), (3, 200, [0.0, 0.05, 0.2]))

    def test_other_nodes_of_a_cluster(self) -> None:
        arguments = lossy.make_parser().parse_args(["--also-node", "9011:9012", "--also-node", "9021:9022"])
        self.assertEqual(arguments.also_node, [(9011, 9012), (9021, 9022)])
        self.assertEqual(lossy.make_parser().parse_args([]).also_node, [])
        for bad in ("9011", "9011:x", "0:9012"):
            self.assertRaises((argparse.ArgumentTypeError, ValueError), lossy.node_ports, bad)
