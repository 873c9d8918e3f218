"""Walk the routing rules for one message and return a Decision: the merged actions and why.

Like a Mailman chain, the walk is a short loop over data: each rule's conditions only answer yes
or no (``Rule.check`` in ``helpdeskd.rules.model``), and every rule's verdict is recorded — hits,
misses, and the rules a ``stop`` skipped — so each decision can be explained afterwards
(``helpdeskd rules test``). Nothing here touches a ticket: the processor applies the Decision
and writes an event per applied action naming its rule. The order is documented in
rules/README.md ("Evaluation").
"""

from __future__ import annotations

from helpdeskd.rules.model import (
    Action,
    Actions,
    Applied,
    Decision,
    Facts,
    Rule,
    RuleResult,
    RuleSet,
)


def evaluate(rules: RuleSet, facts: Facts, *, explain: bool = True) -> Decision:
    """Walk the routing rules in order and merge the actions of those that match.

    Single-valued actions (queue, assign, priority, auto_reply, spam): the last matching rule wins.
    Tags accumulate, a later rule's sign winning for the same tag; notify accumulates. A matching
    rule with ``stop`` ends the walk. Without EXPLAIN the results carry no reasons: the same
    decision, for a caller that only applies it (wording every condition's reason is most of
    the cost of a walk).
    """
    results: list[RuleResult] = []
    chosen: dict[str, tuple[str, Rule, Action]] = {}  # slot -> (value, rule, action)
    stopped_by: str | None = None
    skipped: list[str] = []
    for rule in rules.rules:
        if stopped_by is not None:
            skipped.append(rule.name)
            continue
        if explain:
            matched, reasons = rule.check(facts, rules.calendar)
        else:
            matched, reasons = rule.matches(facts, rules.calendar), ()
        results.append(
            RuleResult(rule.name, rule.file, rule.line, matched, reasons, rule.actions, rule.stop)
        )
        if not matched:
            continue
        for action in rule.actions:
            if action.name == "tags":
                slot = "tags:" + action.value[1:]
            elif action.name == "notify":
                slot = "notify:" + action.value
            else:
                slot = action.name
            chosen.pop(slot, None)  # re-insert: the result lists actions in the order set
            chosen[slot] = (action.value, rule, action)
        if rule.stop:
            stopped_by = rule.name
    values = {slot: value for slot, (value, _, _) in chosen.items()}
    actions = Actions(
        queue=values.get("queue"),
        assign=values.get("assign"),
        priority=values.get("priority"),
        tags_add=tuple(v[1:] for s, v in values.items() if s.startswith("tags:") and v[0] == "+"),
        tags_remove=tuple(
            v[1:] for s, v in values.items() if s.startswith("tags:") and v[0] == "-"
        ),
        auto_reply=values.get("auto_reply"),
        notify=tuple(v for s, v in values.items() if s.startswith("notify:")),
        spam=values.get("spam") == "true",
    )
    applied = tuple(
        Applied(action.name, value, rule.name, rule.file, action.line)
        for value, rule, action in chosen.values()
        if not (action.name == "spam" and value == "false")
    )
    return Decision(actions, applied, tuple(results), tuple(skipped), stopped_by)
