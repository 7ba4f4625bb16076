"""Build the tiny Llama-3 model directory. Run by the ENGINE venv's python (torch and transformers live
there, never in the router's environment), with one argument: a JSON file of inputs written by
``extproc.engines.model``. Standalone on purpose: it imports nothing from ``extproc``.

Deterministic: the weights come from a fixed torch seed on the CPU, the tokenizer from fixed ranks.
The tokenizer is checked before anything is saved (every rank is one token of its own bytes; BOS is
added to plain prompts; the chat template renders Llama-3's framing), so a broken conversion fails the
build instead of serving wrong counts.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def build_tokenizer(args: dict):  # -> transformers.PreTrainedTokenizerFast
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    backend = TikTokenConverter(
        vocab_file=args["ranks"], pattern=args["pattern"], extra_special_tokens=args["specials"]
    ).converted()
    bos = args["bos"]
    bos_id = backend.token_to_id(bos)
    # As Llama-3's own tokenizer.json: byte-level offsets, then BOS in front of every plain prompt
    # (/v1/completions); chat prompts get it from the template and are encoded without special tokens.
    backend.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single=f"{bos} $A", pair=f"{bos} $A {bos} $B:1", special_tokens=[(bos, bos_id)]
            ),
        ]
    )
    template = Path(args["chat_template"]).read_text()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=bos,
        eos_token=args["eos"],
        chat_template=template,
        model_max_length=args["spec"]["max_position_embeddings"],
        clean_up_tokenization_spaces=True,
    )


def check_tokenizer(tok, args: dict) -> None:
    """Fail the build unless the converted tokenizer encodes exactly as the source encoding does."""
    specials = args["specials"]
    n_ranks = len(tok) - len(specials)
    assert tok.convert_tokens_to_ids(specials) == list(range(n_ranks, n_ranks + len(specials))), "special ids"
    for check in args["checks"]:  # texts with their ids from quicktok's own Llama-3 encoder
        got = tok.encode(check["text"], add_special_tokens=False)
        assert got == check["ids"], f"tokenizer differs from the source on {check['text'][:60]!r}: {got[:20]}"
    plain = tok("Hello world").input_ids
    assert plain[0] == tok.bos_token_id and plain.count(tok.bos_token_id) == 1, f"BOS on plain prompts: {plain}"
    chat = tok.apply_chat_template([{"role": "user", "content": "Hello world"}], add_generation_prompt=True)
    ids = chat["input_ids"] if hasattr(chat, "keys") else chat
    # BOS, <|start_header_id|>, user, <|end_header_id|>, "\n\n", Hello, " world", <|eot_id|>,
    # then <|start_header_id|>, assistant, <|end_header_id|>, "\n\n": 5 per request, 5 per message.
    assert len(ids) == 12 and ids.count(tok.bos_token_id) == 1, f"chat template framing: {ids}"


def build_model(args: dict, vocab_size: int, bos_id: int, eos_ids: list[int], out: Path) -> None:
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    spec = args["spec"]
    torch.manual_seed(spec["seed"])
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=spec["hidden_size"],
        intermediate_size=spec["intermediate_size"],
        num_hidden_layers=spec["num_hidden_layers"],
        num_attention_heads=spec["num_attention_heads"],
        num_key_value_heads=spec["num_key_value_heads"],
        max_position_embeddings=spec["max_position_embeddings"],
        rope_theta=spec["rope_theta"],
        bos_token_id=bos_id,
        eos_token_id=eos_ids,
        tie_word_embeddings=True,  # one 128K x hidden matrix, not two: half the file, same behaviour
        torch_dtype=spec["dtype"],
    )
    with torch.device("cpu"):
        model = LlamaForCausalLM(config).to(getattr(torch, spec["dtype"]))
    model.eval()
    model.generation_config = GenerationConfig(bos_token_id=bos_id, eos_token_id=eos_ids)
    model.save_pretrained(out, safe_serialization=True)


def main() -> int:
    args = json.loads(Path(sys.argv[1]).read_text())
    out = Path(args["out"])
    out.mkdir(parents=True)
    tok = build_tokenizer(args)
    check_tokenizer(tok, args)
    eos_ids = [tok.convert_tokens_to_ids(args["end_of_text"]), tok.convert_tokens_to_ids(args["eos"])]
    build_model(args, len(tok), tok.bos_token_id, eos_ids, out)
    tok.save_pretrained(out)
    print(f"saved {out}: vocabulary {len(tok)}, files {sorted(p.name for p in out.iterdir())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
