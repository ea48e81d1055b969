"""The losses trained to convergence (issues 3 and 16): analytic optima are reached, plain DPO's margin never settles,
and DPOP, the NLL term, Cal-DPO and DPO-Shift stop the chosen answer's likelihood from falling where plain DPO lets
it fall; Dr. DPO outweighs flipped pairs that plain DPO settles against; the reference-free losses separate the pair
with no reference tensor at all.

How: a direct torch loop, not `dpo.training.trainer.Trainer`. The tiny random Llama of tests/conftest.py is fully
fine-tuned with Adam on ONE prompt with two answers; per-sequence log-probs come from a plain forward pass
(log_softmax, gathered over the completion tokens), the reference log-probs are those of the initial weights,
and the loss is `dpo.training.losses.compute_loss` on the same tensors the trainer builds. The trainer adds only
collation and logging (checked against TRL in tests/training/test_losses.py) and would make each run many times slower;
this way each run of 150-200 steps takes about a second.

The pair: chosen "aaaaaaab", rejected "aaaaaaaa" (each followed by <|im_end|>). The answers share their first
seven tokens, which cancel exactly in the margin, so DPO can separate them only at the last token, where it
pushes "a" down. The output embedding of "a" is shared with the seven earlier positions, all in the chosen
answer, so the chosen answer's likelihood falls with the rejected one's: likelihood displacement, built in.

Run: python -m pytest tests/training/test_loss_behaviour.py
"""

from __future__ import annotations

import math

import pytest
import torch

from dpo.training.losses import cdpo_optimal_margin, compute_loss

CHOSEN, REJECTED = "aaaaaaab", "aaaaaaaa"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Pair:
    """One prompt with a chosen and a rejected answer, tokenised like TRL does: [chosen; rejected] rows."""

    def __init__(self, model_dir, chosen: str, rejected: str):
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        messages = [{"role": "user", "content": "Say a."}]
        prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        rows = [
            (prompt_ids, tokenizer(answer + "<|im_end|>\n", add_special_tokens=False)["input_ids"])
            for answer in (chosen, rejected)
        ]
        width = max(len(p) + len(c) for p, c in rows)
        self.input_ids = torch.full((2, width), tokenizer.pad_token_id)
        self.attention_mask = torch.zeros(2, width, dtype=torch.long)
        self.completion_mask = torch.zeros(2, width, dtype=torch.long)
        for i, (p, c) in enumerate(rows):
            self.input_ids[i, : len(p) + len(c)] = torch.tensor(p + c)
            self.attention_mask[i, : len(p) + len(c)] = 1
            self.completion_mask[i, len(p) : len(p) + len(c)] = 1
        self.lengths = self.completion_mask.sum(dim=1).double()

    def logps(self, model) -> torch.Tensor:
        """Summed completion log-probs of [chosen, rejected] (float64 for a clean convergence check)."""
        logits = model(input_ids=self.input_ids, attention_mask=self.attention_mask).logits[:, :-1]
        per_token = torch.log_softmax(logits.double(), dim=-1).gather(-1, self.input_ids[:, 1:, None]).squeeze(-1)
        return (per_token * self.completion_mask[:, 1:]).sum(dim=1)


def train(
    model_dir,
    terms,
    beta: float,
    steps: int,
    lr: float = 1e-2,
    flipped: tuple[bool, ...] = (False,),
    reference_free: bool = False,
    **hyperparameters,
) -> list[tuple[float, float]]:
    """Train a fresh tiny model on the pair; returns (chosen log-ratio, rejected log-ratio) before each step and
    after the last one. `flipped`: the batch, one entry per copy of the pair, True where its labels are swapped
    (the returned log-ratios are those of the true chosen and rejected answers). `reference_free`: the loss gets no
    tensor computed from the reference (KeyError if it asks for one)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    pair = Pair(model_dir, CHOSEN, REJECTED)
    with torch.no_grad():
        ref = pair.logps(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    history = []
    for _ in range(steps + 1):
        logps = pair.logps(model)
        logratios = logps - ref
        history.append((logratios[0].item(), logratios[1].item()))
        if len(history) > steps:
            break
        chosen, rejected = torch.tensor([int(f) for f in flipped]), torch.tensor([1 - int(f) for f in flipped])
        tensors = {
            "chosen_logps": logps[chosen],
            "rejected_logps": logps[rejected],
            "ref_chosen_logps": ref[chosen],
            "ref_rejected_logps": ref[rejected],
            "chosen_logratios": logratios[chosen],
            "rejected_logratios": logratios[rejected],
            "chosen_scores": logratios[chosen],
            "rejected_scores": logratios[rejected],
            "chosen_lengths": pair.lengths[chosen],
            "rejected_lengths": pair.lengths[rejected],
            "chosen_scored_tokens": pair.lengths[chosen],  # the prompt precedes every answer token here
            "progress": torch.tensor(len(history) / steps, dtype=torch.float64),
        }
        if reference_free:
            tensors = {k: v for k, v in tensors.items() if not k.startswith("ref_") and "logratios" not in k}
            tensors = {k: v for k, v in tensors.items() if not k.endswith("_scores")}
        loss = sum(weight * compute_loss(name, tensors, beta=beta, **hyperparameters).mean() for name, weight in terms)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return history


def margins(history: list[tuple[float, float]]) -> list[float]:
    return [chosen - rejected for chosen, rejected in history]


@pytest.fixture(scope="module")
def plain_dpo(tiny_model_dir):
    """Plain DPO (beta = 1) for 200 steps: shared by the margin test and the displacement test."""
    return train(tiny_model_dir, [("sigmoid", 1.0)], beta=1.0, steps=200)


def test_cdpo_reaches_its_optimal_margin(tiny_model_dir):
    """cDPO with eps = 0.1, beta = 1: beta * Delta -> log(0.9 / 0.1) = ln 9 = 2.197, and stays there."""
    history = train(tiny_model_dir, [("sigmoid", 1.0)], beta=1.0, steps=150, label_smoothing=0.1)
    assert margins(history)[-1] == pytest.approx(cdpo_optimal_margin(0.1), abs=0.02)
    assert margins(history)[100] == pytest.approx(cdpo_optimal_margin(0.1), abs=0.05)


def test_ipo_reaches_its_length_normalised_target(tiny_model_dir):
    """IPO with beta = 1/2: the per-token margin Delta_avg -> 1 / (2 beta) = 1 (both completions are 10 tokens)."""
    pair = Pair(tiny_model_dir, CHOSEN, REJECTED)
    assert pair.lengths.tolist() == [10, 10]
    history = train(tiny_model_dir, [("ipo", 1.0)], beta=0.5, steps=150)
    chosen, rejected = history[-1]
    assert chosen / 10 - rejected / 10 == pytest.approx(1.0, abs=0.02)


def test_plain_dpo_margin_keeps_growing(plain_dpo):
    """DPO's optimum is an infinite margin: it is still rising after 200 steps, far past cDPO's finite one."""
    margin = margins(plain_dpo)
    assert margin[200] > margin[100] + 0.1
    assert all(later > earlier for earlier, later in zip(margin[100::20], margin[120::20], strict=False))
    assert margin[100] > 3 * cdpo_optimal_margin(0.1)


def test_plain_dpo_lets_the_chosen_likelihood_fall(plain_dpo):
    """The setup displaces: under plain DPO the chosen answer ends far below its starting log-prob."""
    assert plain_dpo[-1][0] < -5.0


@pytest.mark.parametrize(
    ("terms", "hyperparameters"),
    [([("dpop", 1.0)], {"dpop_lambda": 50.0}), ([("sigmoid", 1.0), ("sft", 1.0)], {})],
    ids=["dpop", "sigmoid+sft"],
)
def test_dpop_and_the_nll_term_keep_the_chosen_likelihood(tiny_model_dir, plain_dpo, terms, hyperparameters):
    """Same pair, same steps as plain DPO: the chosen log-prob ends above its start and stays at or above it
    (log-ratio >= -0.1) after the first 10 steps, while the margin still grows.

    Why not from step 0: DPOP's penalty lambda * max(0, -r_w) has zero gradient at r_w = 0, so its first Adam step
    is plain DPO's and the chosen log-ratio can dip (to about -1.5 here) before the penalty pulls it back; it
    stays above -2 throughout, against plain DPO's fall to about -20.
    """
    history = train(tiny_model_dir, terms, beta=1.0, steps=200, **hyperparameters)
    assert min(chosen for chosen, _ in history) > -2.0
    assert min(chosen for chosen, _ in history[10:]) >= -0.1
    assert history[-1][0] > 0.0 and history[-1][0] > plain_dpo[-1][0] + 5.0
    assert history[-1][0] - history[-1][1] > 3.0


# ---------------------------------------------------------------- issue 16


def test_cal_dpo_reaches_its_calibrated_optimum_with_the_chosen_log_ratio_positive(tiny_model_dir, plain_dpo):
    """Cal-DPO with beta = 1, c = 1/(2 beta) = 1/2: L = l(r_w - r_l) + 1/2 (r_w - c)^2 + 1/2 (r_l + c)^2 is strictly
    convex in (r_w, r_l), and the model can set both freely (the answers differ in their last token). Zero gradient:
    dL/dr_w = -s + (r_w - c) = 0 and dL/dr_l = s + (r_l + c) = 0 with s = sigmoid(-(r_w - r_l)), so r_w = c + s,
    r_l = -(c + s) and s = sigmoid(-2c - 2s) = sigmoid(-1 - 2s): s = 0.1983, r_w* = 0.6983 = -r_l*. The chosen
    log-ratio ends positive where plain DPO's falls below -5.
    """
    s = 0.5
    for _ in range(200):  # the fixed point of s = sigmoid(-1 - 2s): a contraction (|ds'/ds| <= 1/2)
        s = 1 / (1 + math.exp(1 + 2 * s))
    history = train(tiny_model_dir, [("cal_dpo", 1.0)], beta=1.0, steps=200)
    chosen, rejected = history[-1]
    assert chosen == pytest.approx(0.5 + s, abs=0.01) and rejected == pytest.approx(-0.5 - s, abs=0.01)
    assert min(c for c, _ in history[60:]) > 0.5 and plain_dpo[-1][0] < -5.0


def test_dpo_shift_keeps_the_chosen_log_ratio_above_zero(tiny_model_dir, plain_dpo):
    """DPO-Shift with f = 0.75: the rejected log-ratio's gradient is scaled by f < 1, so the shared part of the two
    answers is pushed up, not down: the chosen log-ratio never falls below its start (plain DPO: below -5), while the
    margin still grows. (With f = 0.9 this pair still displaces: the paper's trade-off between chosen likelihood and
    margin, f in [0.5, 0.95].)"""
    history = train(tiny_model_dir, [("dpo_shift", 1.0)], beta=1.0, steps=200, shift_lambda=0.75)
    assert min(chosen for chosen, _ in history) >= -0.1
    assert history[-1][0] > 5.0 > plain_dpo[-1][0] + 10.0
    assert history[-1][0] - history[-1][1] > 3.0


@pytest.mark.slow
def test_dr_dpo_outweighs_a_flipped_pair_that_plain_dpo_settles_against(tiny_model_dir):
    """A batch of four copies of the pair, one with its labels flipped; z = beta * Delta of the true pair.

    Plain DPO minimises [3 l(z) + l(-z)] / 4: zero gradient where 3 s(-z) = s(z), i.e. z* = ln 3 = 1.0986, where it
    settles. Dr. DPO with beta' = 1 minimises -log([3 s(z) + s(-z)] / 4) = -log([1 + 2 s(z)] / 4), decreasing in z:
    no finite optimum, the flipped pair's weight s(-z) / (3 s(z) + s(-z)) (1/4 at z = 0, DPO's share) falls towards 0,
    and the margin keeps growing far past ln 3.
    """
    batch = (False, False, False, True)
    dpo = margins(train(tiny_model_dir, [("sigmoid", 1.0)], beta=1.0, steps=150, flipped=batch))
    assert dpo[-1] == pytest.approx(math.log(3), abs=0.01) and dpo[100] == pytest.approx(math.log(3), abs=0.02)
    robust = margins(train(tiny_model_dir, [("dr_dpo", 1.0)], beta=1.0, steps=150, flipped=batch))
    assert robust[-1] > 5 * math.log(3) and robust[-1] > robust[100]
    z = robust[-1]
    flipped_weight = 1 / (1 + 3 * math.exp(z))  # s(-z) / (3 s(z) + s(-z))
    assert flipped_weight < 1e-3 < 0.25


def test_chi_po_stops_once_its_clipped_argument_is_reached(tiny_model_dir, plain_dpo):
    """chi-PO with beta = 1, C = 2: the loss l(clip_C(beta (phi(z_w) - phi(z_l)))) is flat, with zero gradient, for
    every beta * (phi(z_w) - phi(z_l)) >= C: its minimum l(C) is reached at a finite point and training stops there
    (the log-ratios freeze), where plain DPO's margin keeps growing. The phi link grows like e^r, so the argument
    jumps past C within a few steps at lr 1e-3 (at lr 1e-2 the first steps can also jump past -C, where the
    two-sided clip freezes the pair on the wrong side: see docs/losses.md)."""
    history = train(tiny_model_dir, [("chi_po", 1.0)], beta=1.0, steps=150, lr=1e-3, chi_clip=2.0)

    def phi(r):
        return math.exp(r) + r

    chosen, rejected = history[-1]
    assert phi(chosen) - phi(rejected) >= 2.0
    assert abs(history[-1][0] - history[-51][0]) < 1e-3 and abs(history[-1][1] - history[-51][1]) < 1e-3
    dpo = margins(plain_dpo)
    assert dpo[-1] > dpo[-51] + 0.1


@pytest.mark.parametrize(
    ("name", "beta", "hyperparameters"),
    [("simpo", 2.0, {"simpo_gamma": 1.0}), ("orpo", 0.1, {})],
    ids=["simpo", "orpo"],
)
def test_reference_free_losses_separate_the_pair_without_a_reference(tiny_model_dir, name, beta, hyperparameters):
    """SimPO and ORPO get no reference tensor at all (removed from what the loss may read), and still separate the
    pair: SimPO's length-normalised margin passes gamma / beta = 1/2 and keeps growing (no finite optimum; it lets
    both likelihoods fall); ORPO's NLL term raises the chosen answer's likelihood, which never falls below its start.
    """
    history = train(tiny_model_dir, [(name, 1.0)], beta=beta, steps=150, reference_free=True, **hyperparameters)
    margin = margins(history)  # both answers are 10 tokens: the per-token margin is margin / 10
    assert margin[-1] / 10 > 0.5 and margin[-1] > margin[100]
    if name == "orpo":
        assert min(chosen for chosen, _ in history) >= -0.1 and history[-1][0] > 5.0
