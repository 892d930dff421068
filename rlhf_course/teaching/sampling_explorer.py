"""The sampling explorer: how temperature, top-k and top-p reshape the next-token distribution, live.

``SamplingExplorer`` holds the logic and is tested without a browser; ``sampling_explorer`` wires sliders to it.
"""

from __future__ import annotations

import html
from dataclasses import dataclass

import torch

from rlhf_course.core.chat import encode
from rlhf_course.core.language_model import generate, sampling_logits
from rlhf_course.teaching.style import BIG


@dataclass
class Sample:
    tokens: list[str]  # the reply, one decoded token each (the last may be the end of sequence)
    probs: list[float]  # each token's probability under the distribution it was drawn from
    model_probs: list[float]  # the same token's probability under the model itself (temperature 1, no filter)


class SamplingExplorer:
    """Samples replies to one prompt with a given temperature, top-k and top-p, and the probability of every
    sampled token. ``chat`` wraps the prompt in the chat template (instruction-tuned models); without it the
    text is continued as it is (the base model)."""

    def __init__(
        self,
        model,
        tokenizer,
        prompt: str,
        chat: bool = False,
        temperature: float = 0.8,
        top_k: int = 0,
        top_p: float = 1.0,
        n: int = 4,
        seed: int = 0,
        max_new_tokens: int = 24,
    ):
        self.model, self.tokenizer, self.prompt, self.chat = model, tokenizer, prompt, chat
        self.temperature, self.top_k, self.top_p, self.n, self.seed = temperature, top_k, top_p, n, seed
        self.max_new_tokens = max_new_tokens

    def prompt_ids(self) -> list[int]:
        if self.chat:
            return encode(self.tokenizer, [{"role": "user", "content": self.prompt}])[0]
        return self.tokenizer(self.prompt)["input_ids"]

    def _probs(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(sampling, model) probabilities from logits (..., vocab); greedy puts all mass on the argmax."""
        model = torch.softmax(logits.float(), dim=-1)
        if self.temperature == 0:
            return torch.nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).float(), model
        return torch.softmax(sampling_logits(logits.float(), self.temperature, self.top_p, self.top_k), dim=-1), model

    @torch.no_grad()
    def next_token_table(self, k: int = 8) -> list[tuple[str, float, float]]:
        """The model's ``k`` likeliest first tokens: (token, model probability, sampling probability)."""
        dev = next(self.model.parameters()).device
        logits = self.model(input_ids=torch.tensor([self.prompt_ids()], device=dev)).logits[0, -1]  # (vocab,)
        sampling, model = self._probs(logits)
        top = model.topk(k).indices.tolist()
        return [(self.tokenizer.decode([t]), model[t].item(), sampling[t].item()) for t in top]

    @torch.no_grad()
    def sample(self) -> list[Sample]:
        tok, ids = self.tokenizer, self.prompt_ids()
        sequences, response_mask = generate(
            self.model,
            [ids] * self.n,
            pad_id=tok.pad_token_id,
            eos_id=tok.eos_token_id,
            max_new_tokens=self.max_new_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            seed=self.seed,
        )  # (n, prompt + new) each
        attention = response_mask.clone()
        attention[:, : len(ids)] = 1  # one prompt for every row: no left padding
        logits = self.model(input_ids=sequences, attention_mask=attention).logits[:, :-1]  # predicts tokens 1..
        sampling, model = self._probs(logits)  # (n, seq - 1, vocab) each
        target = sequences[:, 1:].unsqueeze(-1)  # (n, seq - 1, 1)
        p_sampling = sampling.gather(-1, target).squeeze(-1)  # (n, seq - 1)
        p_model = model.gather(-1, target).squeeze(-1)
        keep = response_mask[:, 1:].bool()  # (n, seq - 1)
        return [
            Sample(
                [tok.decode([t]) for t in sequences[i, 1:][keep[i]].tolist()],
                p_sampling[i][keep[i]].tolist(),
                p_model[i][keep[i]].tolist(),
            )
            for i in range(self.n)
        ]


def _token_box(text: str, p: float, p_model: float) -> str:
    shown = html.escape(text).replace(" ", "&nbsp;") or "&#8203;"
    return (
        f"<span title='model {p_model:.3f}' style='display:inline-block; text-align:center; margin:1px; "
        f"padding:0 2px; background:rgba(31,119,180,{0.1 + 0.6 * p:.2f}); border-radius:3px'>"
        f"<span style='font-family:monospace'>{shown}</span><br><small>{p:.2f}</small></span>"
    )


def render_samples(samples: list[Sample], eos_token: str) -> str:
    """Each sample as a row of token boxes shaded by the probability they were drawn with."""
    rows = []
    for s in samples:
        boxes = "".join(
            _token_box("⏎" if t == eos_token else t, p, q) for t, p, q in zip(s.tokens, s.probs, s.model_probs)
        )
        rows.append(f"<div style='{BIG}; margin-bottom:4px'>{boxes}</div>")
    return "".join(rows)


def render_next_token_table(rows: list[tuple[str, float, float]]) -> str:
    cells = "".join(
        f"<tr><td style='font-family:monospace'>{html.escape(t) or '&#8203;'}</td><td>{p:.3f}</td><td>{q:.3f}</td></tr>"
        for t, p, q in rows
    )
    return (
        f"<table style='{BIG}'><tr><th>next token</th><th>model</th><th>after temperature and filters</th></tr>"
        f"{cells}</table>"
    )


def sampling_explorer(explorer: SamplingExplorer):
    """Prompt box, temperature, top-k, top-p and sample-count sliders, and a button for fresh samples; shows the
    first token's distribution before and after the settings, and the samples token by token."""
    import ipywidgets as w

    style = {"description_width": "100px"}
    prompt = w.Text(
        value=explorer.prompt,
        description="prompt",
        continuous_update=False,
        style=style,
        layout=w.Layout(width="600px"),
    )
    temperature = w.FloatSlider(
        value=explorer.temperature,
        min=0.0,
        max=2.0,
        step=0.05,
        description="temperature",
        continuous_update=False,
        style=style,
    )
    top_k = w.IntSlider(
        value=explorer.top_k, min=0, max=50, description="top-k (0 off)", continuous_update=False, style=style
    )
    top_p = w.FloatSlider(
        value=explorer.top_p, min=0.05, max=1.0, step=0.05, description="top-p", continuous_update=False, style=style
    )
    n = w.IntSlider(value=explorer.n, min=1, max=8, description="samples", continuous_update=False, style=style)
    again = w.Button(description="New samples", button_style="info", layout=w.Layout(width="150px", height="40px"))
    table, shown = w.HTML(), w.HTML()

    def refresh(_=None):
        explorer.prompt, explorer.temperature, explorer.top_k = prompt.value, temperature.value, top_k.value
        explorer.top_p, explorer.n = top_p.value, n.value
        table.value = render_next_token_table(explorer.next_token_table())
        shown.value = render_samples(explorer.sample(), explorer.tokenizer.eos_token)

    def new_seed(_):
        explorer.seed += 1
        refresh()

    for control in (prompt, temperature, top_k, top_p, n):
        control.observe(refresh, names="value")
    again.on_click(new_seed)
    refresh()
    return w.VBox([prompt, w.HBox([w.VBox([temperature, top_k, top_p, n, again]), table]), shown])
