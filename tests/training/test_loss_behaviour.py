"""The losses trained to convergence (issue 3): analytic optima are reached, plain DPO's margin never settles,
and DPOP and the NLL term stop the chosen answer's likelihood from falling where plain DPO lets it fall.

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


def train(model_dir, terms, beta: float, steps: int, lr: float = 1e-2, **hyperparameters) -> list[tuple[float, float]]:
    """Train a fresh tiny model on the pair; returns (chosen log-ratio, rejected log-ratio) before each step and
    after the last one."""
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
        tensors = {
            "chosen_logps": logps[:1],
            "rejected_logps": logps[1:],
            "ref_chosen_logps": ref[:1],
            "ref_rejected_logps": ref[1:],
            "chosen_logratios": logratios[:1],
            "rejected_logratios": logratios[1:],
            "chosen_scores": logratios[:1],
            "rejected_scores": logratios[1:],
            "chosen_lengths": pair.lengths[:1],
            "rejected_lengths": pair.lengths[1:],
            "chosen_scored_tokens": pair.lengths[:1],  # the prompt precedes every answer token here
        }
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
