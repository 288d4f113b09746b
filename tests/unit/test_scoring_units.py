"""peftsft.training.scoring's pieces called directly: answers matched the SQuAD way, rows left-padded and batched
within the logits budget, and the loss and log-probabilities of a small fake model checked against their
definitions — no real model loaded."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from peftsft.data.masking import IGNORE
from peftsft.training import scoring
from peftsft.training.scoring import _Sequence

# ---------------------------------------------------------------------------------------------- answer metrics


def test_normalizing_lowercases_drops_punctuation_and_underscores_and_collapses_whitespace():
    assert scoring.normalize("  The  Cat_s, \t (sat)!\n ") == "the cats sat"
    assert scoring.normalize("Élan 42") == "élan 42"


@pytest.mark.parametrize("prediction, reference, expected", [
    ("Paris.", "paris", 1.0), ("Paris, France", "Paris", 0.0), ("", "", 1.0)])
def test_exact_match_compares_normalized_texts(prediction, reference, expected):
    assert scoring.exact_match(prediction, reference) == expected


@pytest.mark.parametrize("prediction, reference, expected", [
    ("It is Paris, France.", "paris", 1.0),
    ("Parisian food", "paris", 0.0),  # on word boundaries only
    ("the big cat", "big cat", 1.0),
    ("anything", "!!", 0.0),  # an empty reference is in nothing
    ("", "", 0.0),
])
def test_contains_reference_needs_the_whole_reference_on_word_boundaries(prediction, reference, expected):
    got = scoring.contains_reference(prediction, reference)
    assert got == expected and type(got) is float


@pytest.mark.parametrize("prediction, reference, expected", [
    ("the cat sat", "the cat sat", 1.0),
    ("a b c d", "a b", 2 * 0.5 * 1.0 / 1.5),  # precision 1/2, recall 1
    ("a a b", "a c", 2 * (1 / 3) * (1 / 2) / (1 / 3 + 1 / 2)),  # a counted once in common
    ("x y", "a b", 0.0),
    ("", "", 1.0),
    ("", "a", 0.0),
    ("a", "...", 0.0),
])
def test_token_f1_is_the_harmonic_mean_of_token_precision_and_recall(prediction, reference, expected):
    assert scoring.token_f1(prediction, reference) == pytest.approx(expected, abs=1e-12)


def test_answer_metrics_are_means_with_rouge_l_and_corpus_bleu():
    from sacrebleu.metrics import BLEU

    predictions, references = ["The cat sat.", "a dog", "no"], ["the cat sat", "a big dog ran", "yes"]
    got = scoring.answer_metrics(predictions, references)
    assert list(got) == list(scoring.ANSWER_METRICS)
    assert got["exact_match"] == pytest.approx(1 / 3)
    assert got["contains_reference"] == pytest.approx(1 / 3)
    assert got["token_f1"] == pytest.approx((1 + 2 * 1 * 0.5 / 1.5 + 0) / 3)
    assert got["rouge_l"] == pytest.approx((1 + 2 * 1 * 0.5 / 1.5 + 0) / 3)  # raw texts: "sat." is "sat" to ROUGE
    assert got["bleu"] == pytest.approx(BLEU(effective_order=True).corpus_score(predictions, [references]).score)


def test_a_copied_short_answer_scores_full_bleu_though_it_has_no_4_grams():
    assert scoring.answer_metrics(["two words"], ["two words"])["bleu"] == pytest.approx(100.0)


def test_no_references_no_answer_metrics():
    assert scoring.answer_metrics([], []) == {}


# ---------------------------------------------------------------------------------------------- padding and batches


def test_rows_are_left_padded_with_their_mask_and_ignored_labels():
    ids, mask, labels = scoring._left_pad([_Sequence([5, 6, 7], [IGNORE, 6, 7]), _Sequence([8], [8])], 0, -9)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert labels.tolist() == [[IGNORE, 6, 7], [-9, -9, 8]]
    assert ids.dtype == mask.dtype == labels.dtype == torch.long


def test_the_scored_tail_reaches_back_to_the_first_supervised_position_of_any_row():
    labels = torch.tensor([[-1, -1, -1, 4, 5], [-1, -1, 3, -1, -1], [-1, -1, -1, -1, -1]])
    assert scoring._scored_tail(labels, -1) == 3
    assert scoring._scored_tail(torch.tensor([[-1, -1, 7]]), -1) == 1
    assert scoring._scored_tail(torch.tensor([[-1, -1, -1]]), -1) == 1  # nothing supervised: one position anyway
    assert scoring._scored_tail(torch.tensor([[2, 3, 4]]), -1) == 3


def rows(*tails: tuple[int, int]) -> list[_Sequence]:
    """Rows of `length` tokens whose last `tail` are supervised."""
    return [_Sequence(list(range(length)), [IGNORE] * (length - tail) + [1] * tail) for length, tail in tails]


def batch_sizes(samples, vocab: int, most: int) -> list[int]:
    return [len(batch) for batch in scoring._batches(samples, vocab, most, IGNORE)]


def test_batches_hold_at_most_the_batch_size():
    assert batch_sizes(rows(*[(4, 2)] * 7), 10, 3) == [3, 3, 1]
    assert batch_sizes(rows(*[(4, 2)] * 6), 10, 3) == [3, 3]
    assert batch_sizes([], 10, 3) == []


def test_batches_shrink_so_their_tails_logits_fit_the_budget(monkeypatch):
    monkeypatch.setattr(scoring, "LOGITS_BUDGET", 60)
    # tails of 2 supervised tokens need 3 positions' logits: 10 * 3 = 30 a row, so two rows a batch
    assert batch_sizes(rows(*[(6, 2)] * 5), 10, 8) == [2, 2, 1]
    # exactly at the budget still fits
    monkeypatch.setattr(scoring, "LOGITS_BUDGET", 90)
    assert batch_sizes(rows(*[(6, 2)] * 5), 10, 8) == [3, 2]


def test_a_long_tail_starts_a_new_batch_and_the_tail_is_the_batchs_longest(monkeypatch):
    monkeypatch.setattr(scoring, "LOGITS_BUDGET", 100)
    # 10-wide rows: tails 2 (3 positions), 2, then 4 (5 positions): 3 rows x 5 x 10 = 150 > 100
    samples = rows((6, 2), (6, 2), (9, 4), (3, 1), (3, 1))
    batches = list(scoring._batches(samples, 10, 8, IGNORE))
    assert [len(b) for b in batches] == [2, 2, 1]
    assert batches[1] == samples[2:4]  # 2 rows x 5 = 100: fits; a third makes 150


def test_a_row_without_supervised_tokens_needs_one_position(monkeypatch):
    monkeypatch.setattr(scoring, "LOGITS_BUDGET", 20)
    samples = [_Sequence([1, 2, 3], [IGNORE] * 3)] * 3
    assert batch_sizes(samples, 10, 8) == [2, 1]  # one position each: 2 rows x 1 x 10 = 20


def test_a_row_alone_is_a_batch_even_over_the_budget(monkeypatch):
    monkeypatch.setattr(scoring, "LOGITS_BUDGET", 5)
    assert batch_sizes(rows((6, 4), (6, 4)), 10, 8) == [1, 1]


# ---------------------------------------------------------------------------------------------- a fake model


class Bigram(torch.nn.Module):
    """Logits of the next token from this one alone: a table, so any position's logits are known."""

    def __init__(self, vocab: int = 7, hidden: int = 3, scale: float = 1.0, dtype=torch.float32):
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.table = torch.nn.Parameter(torch.randn(vocab, vocab, generator=generator) * scale)
        self.head = torch.nn.Linear(hidden, vocab, bias=False)  # the output embeddings: [vocab, hidden]
        self.dtype_out, self.calls = dtype, []

    @property
    def device(self):
        return torch.device("cpu")

    def get_output_embeddings(self):
        return self.head

    def full(self, ids: torch.Tensor) -> torch.Tensor:
        return self.table[ids]

    def forward(self, input_ids, attention_mask, logits_to_keep):
        self.calls.append(SimpleNamespace(ids=input_ids.tolist(), mask=attention_mask.tolist(), keep=logits_to_keep,
                                          training=self.training, grad=torch.is_grad_enabled()))
        return SimpleNamespace(logits=self.full(input_ids)[:, -logits_to_keep:].to(self.dtype_out))


def reference_loss(model: Bigram, samples) -> tuple[float, int]:
    total, count = 0.0, 0
    for sample in samples:
        logits = model.full(torch.tensor(sample.input_ids))[:-1].double()
        targets = torch.tensor(sample.labels[1:])
        total += torch.nn.functional.cross_entropy(logits, targets, ignore_index=IGNORE, reduction="sum").item()
        count += int((targets != IGNORE).sum())
    return total, count


SAMPLES = [
    _Sequence([1, 2, 3, 4], [IGNORE, IGNORE, 3, 4]),
    _Sequence([2, 5, 6, 1, 3, 2], [IGNORE, IGNORE, 6, IGNORE, 3, 2]),
    _Sequence([4, 4], [IGNORE, 4]),
]


@pytest.fixture
def encoded(monkeypatch):
    """masking.encode answering SAMPLES by conversation index, and recording how it was asked."""
    from peftsft.data import masking

    asked = []

    def encode(tokenizer, messages, masking_mode, max_length):
        asked.append((tokenizer, masking_mode, max_length))
        return SAMPLES[messages]

    monkeypatch.setattr(masking, "encode", encode)
    return asked


def test_the_assistant_loss_is_the_token_weighted_mean_over_supervised_targets(encoded):
    model, tokenizer = Bigram(), SimpleNamespace(pad_token_id=0)
    model.train()
    got = scoring.assistant_loss(model, tokenizer, [0, 1, 2], 99, batch_size=8)
    total, count = reference_loss(model, SAMPLES)
    assert count == 6 and got["eval_tokens"] == 6
    assert got["eval_loss"] == pytest.approx(total / count, rel=1e-6)
    assert got["perplexity"] == pytest.approx(math.exp(total / count), rel=1e-6)
    assert encoded == [(tokenizer, "assistant", 99)] * 3
    call, = model.calls  # one batch: every row left-padded to the longest
    assert call.ids == [[0, 0, 1, 2, 3, 4], [2, 5, 6, 1, 3, 2], [0, 0, 0, 0, 4, 4]]
    assert call.mask == [[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 1, 1]]
    assert call.keep == 5  # targets from position 2 on: 4 positions, and the one before them
    assert (call.training, call.grad) == (False, False) and model.training  # scored in inference mode, then restored


@pytest.mark.parametrize("batch_size, batches", [(1, 3), (2, 2)])
def test_the_assistant_loss_is_the_same_in_smaller_batches(encoded, batch_size, batches):
    model = Bigram()
    got = scoring.assistant_loss(model, SimpleNamespace(pad_token_id=0), [0, 1, 2], 99, batch_size=batch_size)
    total, count = reference_loss(model, SAMPLES)
    assert got["eval_loss"] == pytest.approx(total / count, rel=1e-6) and len(model.calls) == batches
    assert [call.keep for call in model.calls] == ([3, 5, 2] if batch_size == 1 else [5, 2])


def test_the_batches_count_the_vocabulary_of_the_output_embeddings(encoded, monkeypatch):
    monkeypatch.setattr(scoring, "LOGITS_BUDGET", 2 * 5 * 7)  # two rows of 5 positions at vocabulary 7
    model = Bigram(vocab=7, hidden=3)
    scoring.assistant_loss(model, SimpleNamespace(pad_token_id=0), [0, 1, 2], 99, batch_size=8)
    assert [len(call.ids) for call in model.calls] == [2, 1]


def test_half_precision_logits_are_scored_in_float32(encoded):
    model = Bigram(scale=30.0, dtype=torch.bfloat16)
    got = scoring.assistant_loss(model, SimpleNamespace(pad_token_id=0), [0, 1, 2], 99, batch_size=8)
    exact = Bigram(scale=30.0)
    exact.table.data = model.table.data.to(torch.bfloat16).float()
    total, count = reference_loss(exact, SAMPLES)
    assert got["eval_loss"] == pytest.approx(total / count, rel=1e-6)


def test_a_huge_loss_caps_the_perplexity_instead_of_overflowing(encoded):
    got = scoring.assistant_loss(Bigram(scale=1e4), SimpleNamespace(pad_token_id=0), [0, 1, 2], 99, batch_size=8)
    assert got["eval_loss"] > 700 and got["perplexity"] == math.exp(700.0)


def test_no_conversations_score_no_tokens():
    assert scoring.assistant_loss(Bigram(), SimpleNamespace(pad_token_id=0), [], 99, batch_size=8) == {
        "eval_loss": 0.0, "perplexity": 1.0, "eval_tokens": 0}


def test_answer_log_probabilities_sum_the_answers_tokens_after_the_prompt():
    model = Bigram()
    sequences = [([1, 2], [3, 4]), ([5], [6, 1, 2]), ([3, 3, 3], [0])]
    got = scoring.answer_logprobs(model, SimpleNamespace(pad_token_id=0), sequences, batch_size=2)
    expected = []
    for prompt, answer in sequences:
        ids = prompt + answer
        logprobs = torch.log_softmax(model.full(torch.tensor(ids)).double(), dim=-1)
        expected.append((sum(logprobs[i - 1, ids[i]].item() for i in range(len(prompt), len(ids))), len(answer)))
    assert [n for _, n in got] == [n for _, n in expected]
    assert [s for s, _ in got] == pytest.approx([s for s, _ in expected], rel=1e-6)
    assert [call.keep for call in model.calls] == [4, 2]  # the longest answer's tokens and the one before
    assert model.calls[1].ids == [[3, 3, 3, 0]]


def test_answer_log_probabilities_pad_with_the_tokenizers_pad_id():
    model = Bigram()
    scoring.answer_logprobs(model, SimpleNamespace(pad_token_id=6), [([1], [2]), ([1, 2, 3], [4])], batch_size=2)
    assert model.calls[0].ids == [[6, 6, 1, 2], [1, 2, 3, 4]]


def test_answer_log_probabilities_of_half_precision_logits_are_taken_in_float32():
    model = Bigram(scale=30.0, dtype=torch.bfloat16)
    got = scoring.answer_logprobs(model, SimpleNamespace(pad_token_id=0), [([1, 2], [3, 4])], batch_size=2)
    logits = model.full(torch.tensor([1, 2, 3])).to(torch.bfloat16).double()
    logprobs = torch.log_softmax(logits, dim=-1)
    assert got[0][0] == pytest.approx(logprobs[1, 3].item() + logprobs[2, 4].item(), rel=1e-6)


def test_a_single_scored_token_is_its_own_loss(monkeypatch):
    from peftsft.data import masking

    monkeypatch.setattr(masking, "encode", lambda tokenizer, messages, mode, length: SAMPLES[2])
    model = Bigram()
    got = scoring.assistant_loss(model, SimpleNamespace(pad_token_id=0), [2], 99, batch_size=8)
    total, count = reference_loss(model, [SAMPLES[2]])
    assert count == 1 and got["eval_loss"] == pytest.approx(total, rel=1e-6) and got["eval_tokens"] == 1


class Everywhere(Bigram):
    """A model that ignores logits_to_keep: every position's logits."""

    def forward(self, input_ids, attention_mask, logits_to_keep):
        super().forward(input_ids, attention_mask, logits_to_keep)
        return SimpleNamespace(logits=self.full(input_ids))


def test_a_model_answering_every_positions_logits_scores_the_same(encoded):
    model = Everywhere()
    got = scoring.assistant_loss(model, SimpleNamespace(pad_token_id=0), [0, 1, 2], 99, batch_size=8)
    total, count = reference_loss(model, SAMPLES)
    assert got["eval_loss"] == pytest.approx(total / count, rel=1e-6)


class Elsewhere(torch.nn.Module):
    """A model on another device (meta here): records where its inputs were put, answers uniform CPU logits."""

    def __init__(self):
        super().__init__()
        self.head, self.devices = torch.nn.Linear(2, 7, bias=False), []

    device = property(lambda self: torch.device("meta"))

    def get_output_embeddings(self):
        return self.head

    def forward(self, input_ids, attention_mask, logits_to_keep):
        self.devices.append((input_ids.device.type, attention_mask.device.type))
        return SimpleNamespace(logits=torch.zeros(input_ids.shape[0], logits_to_keep, 7))


def test_the_rows_go_to_the_models_device(encoded):
    model = Elsewhere()
    got = scoring.assistant_loss(model, SimpleNamespace(pad_token_id=0), [0, 1, 2], 99, batch_size=8)
    assert model.devices == [("meta", "meta")]
    assert got["eval_loss"] == pytest.approx(math.log(7)) and got["eval_tokens"] == 6


# ---------------------------------------------------------------------------------------------- the head's inputs


def test_in_inference_mode_the_output_head_gets_contiguous_hidden_states():
    """`logits_to_keep` hands the head a slice of the hidden states; with a frozen weight, torch multiplies a sliced
    batch by a copy of the weight per row, so in inference mode the slice is made contiguous first."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from peftsft.generation import inference_mode

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=1))
    model.requires_grad_(False).train()
    seen = []
    model.lm_head.register_forward_hook(lambda module, args, out: seen.append(args[0].is_contiguous()))
    ids = torch.randint(0, 64, (3, 5))
    with torch.no_grad():
        expected = model(input_ids=ids, logits_to_keep=2).logits
    with inference_mode(model) as same:
        assert same is model and not model.training
        got = model(input_ids=ids, logits_to_keep=2).logits
    assert model.training and torch.equal(got, expected)
    with torch.no_grad():
        model(input_ids=ids, logits_to_keep=2)  # the hook is gone again
    assert seen == [False, True, False]
