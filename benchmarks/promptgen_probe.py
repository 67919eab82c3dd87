"""Where PromptGen loses quality: measurements on a FactWorld (docs/promptgen.md, "What limits PromptGen").

    python benchmarks/promptgen_probe.py prompts --world DIR [--checkpoint STATE] [--stopping mask|eos|fixed]
    python benchmarks/promptgen_probe.py hull --world DIR [--relations P19,P20,P108] [--lengths 10+5,5+1]

``prompts`` builds the PromptGen adapter as ``benchmarks/lama.py --method promptgen`` does (one generator for every
relation), optionally loads the generator from a training checkpoint of that harness
(``OUTPUT/checkpoints/joint-seed42/vNNNNNN/state.safetensors`` of a run with ``--keep-checkpoints``: the epoch the
harness kept; without it, the generator as pretrained), and prints
macro P@1 and None-subject P@1 on the train and test facts, how peaked the written soft tokens are and how long the
segments run, how many prompts hold the gold object among their words, and some prompts as text.

``hull`` asks what the prompt space can reach without a generator: for each relation it trains free logits over the
shared vocabulary at every soft position (the soft tokens PromptGen writes, but one prompt per relation) and prints
test P@1, next to the world's hand-written prompts. ``--init-gap G`` starts every position peaked on a random word
(logit G above the rest), as peaked as a pretrained generator's output.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import lama
import torch
from peft import get_peft_model
from safetensors.torch import load_file
from transformers import AutoModelForMaskedLM, AutoTokenizer

from prompt_adapters import PromptGenCollator
from prompt_adapters.methods.promptgen.config import STOPPING
from prompt_adapters.methods.promptgen.vocab import common_vocabulary
from prompt_adapters.training import precision_at_1, rank_answers

SEED = 42  # the harness's default seed: the same facts and order as its rows


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    prompts = commands.add_parser("prompts", help="P@1 and None P@1 on train and test, soft-token statistics")
    prompts.add_argument("--world", required=True, type=Path)
    prompts.add_argument("--checkpoint", type=Path,
                         help="state.safetensors of a lama.py PromptGen checkpoint (kept by its --keep-checkpoints)")
    prompts.add_argument("--stopping", default="mask", choices=STOPPING)
    prompts.add_argument("--stop-at-answers", action="store_true",
                         help="the training facts' objects as answer_words, as benchmarks/lama.py --stop-at-answers")
    prompts.add_argument("--show", type=int, default=2, help="prompts shown per relation and split")
    hull = commands.add_parser("hull", help="one prompt per relation, free logits over the shared vocabulary")
    hull.add_argument("--world", required=True, type=Path)
    hull.add_argument("--relations", default="P19,P20,P108")
    hull.add_argument("--lengths", default="10+5,5+1", help="soft tokens before+after the answer slot, comma-separated")
    hull.add_argument("--steps", type=int, default=150)
    hull.add_argument("--lr", type=float, default=0.1)
    hull.add_argument("--init-gap", type=float, default=0.0)
    return parser.parse_args(argv)


def prompts_report(args: argparse.Namespace) -> dict:
    world = args.world
    lama_args = lama.parse_args([
        "--model", str(world / "bert"), "--data-dir", str(world / "lama"), "--method", "promptgen",
        "--generator", str(world / "bart"), "--stopping", args.stopping, "--output", "unused",
        *(["--stop-at-answers"] if args.stop_at_answers else []),
    ])
    probe = lama.Probe(lama_args, torch.device("cpu"))
    relations = lama.lama_data.available_relations(lama_args.data_dir, lama_args.split, "test")
    jobs = [probe.prepare(relation, SEED) for relation in relations]
    for job in jobs:
        for split in (job.train, job.test):
            split[:] = [{**fact, "template": job.manual_template} for fact in split]
    config = lama.pooled_config(lama.METHODS["promptgen"], lama_args, [fact for job in jobs for fact in job.train])
    config.compile(probe.tokenizer)
    model = get_peft_model(probe.base, config)
    if args.checkpoint:
        saved = load_file(str(args.checkpoint))
        kept = "best." if any(key.startswith("best.") for key in saved) else "param."  # the epoch the harness kept
        with torch.no_grad():
            for name, param in model.named_parameters():
                if param.requires_grad:
                    param.copy_(saved[kept + name])
    scored = PromptGenCollator(probe.tokenizer, model, leak_rows=False, candidate_ids=probe.candidate_tensor)
    leaky = PromptGenCollator(probe.tokenizer, model, leak_rows=True, candidate_ids=probe.candidate_tensor)
    report: dict = {}
    for split in ("train", "test"):
        p1, none = [], []
        for job in jobs:
            facts, exclude = getattr(job, split), probe.exclusion(job.relation)
            p1.append(precision_at_1(rank_answers(model, scored, facts, exclude=exclude)))
            none.append(precision_at_1(rank_answers(model, leaky, facts, scores="none_log_probs", exclude=exclude)))
        report[split] = {"macro P@1": round(100 * statistics.fmean(p1), 1),
                         "None P@1": round(100 * statistics.fmean(none), 1)}
    tuner = model.base_model
    model.eval()
    peaks, lengths, examples, holds_answer = [], [], [], {"train": [], "test": []}
    m = tuner.state.options[tuner.active_adapter]["m"]
    for job in jobs:
        for split in ("train", "test"):
            facts = getattr(job, split)
            texts = tuner.generated_prompts(scored(facts), probe.tokenizer)
            steps, written = tuner.state.last_generation
            for row, (before, after) in enumerate(written.tolist()):
                used = torch.cat([steps[row, :before], steps[row, m : m + after]])
                peaks += used.max(-1).values.tolist()
                lengths.append((before, after))
            holds_answer[split] += [f["obj"] in text.split() for f, text in zip(facts, texts, strict=True)]
            examples += [f"{job.relation} {split} {f['sub']} -> {f['obj']}: {t}"
                         for f, t in zip(facts[: args.show], texts, strict=False)]
    report["soft tokens"] = {
        "median max probability": round(statistics.median(peaks), 3),
        "mean max probability": round(statistics.fmean(peaks), 3),
        "mean segment lengths": [round(statistics.fmean(length[i] for length in lengths), 2) for i in (0, 1)],
    }
    report["prompts holding the gold object (%)"] = {
        split: round(100 * statistics.fmean(flags), 1) for split, flags in holds_answer.items()}
    report["prompts"] = examples
    return report


def hull_report(args: argparse.Namespace) -> dict:
    torch.manual_seed(0)
    generator = random.Random(0)
    world_dir = args.world
    tokenizer = AutoTokenizer.from_pretrained(world_dir / "bert")
    shared, _ = common_vocabulary(tokenizer, AutoTokenizer.from_pretrained(world_dir / "bart"))
    shared_ids = torch.tensor(shared)
    bert = AutoModelForMaskedLM.from_pretrained(world_dir / "bert").eval().requires_grad_(False)
    embeddings = bert.get_input_embeddings().weight
    world = json.loads((world_dir / "world.json").read_text(encoding="utf-8"))
    relations = {relation["relation"]: relation for relation in world["relations"]}

    def ids(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False).input_ids

    def log_probs(facts: list[dict], before: torch.Tensor, after: torch.Tensor, candidates: torch.Tensor):
        """Candidate log-probabilities at [MASK] for ``[CLS] subject before [MASK] after [SEP]`` (embeddings)."""
        rows = [torch.cat([embeddings[[tokenizer.cls_token_id]], embeddings[ids(f["sub"])], before,
                           embeddings[[tokenizer.mask_token_id]], after, embeddings[[tokenizer.sep_token_id]]])
                for f in facts]
        width = max(len(row) for row in rows)
        inputs = torch.zeros(len(rows), width, embeddings.shape[1])
        mask = torch.zeros(len(rows), width, dtype=torch.long)
        for index, row in enumerate(rows):
            inputs[index, : len(row)], mask[index, : len(row)] = row, 1
        slots = torch.tensor([1 + len(ids(f["sub"])) + len(before) for f in facts])
        logits = bert(inputs_embeds=inputs, attention_mask=mask).logits[torch.arange(len(facts)), slots]
        return logits[:, candidates].log_softmax(-1)

    report: dict = {}
    for name in args.relations.split(","):
        relation = relations[name]
        objects = world["entities"][relation["object_type"]]
        candidates = torch.tensor([ids(obj)[0] for obj in objects])
        index = {obj: i for i, obj in enumerate(objects)}
        facts = world["facts"][name]
        train = [f for f in facts if f["split"] == "train"]
        test = [f for f in facts if f["split"] == "test"]
        gold = torch.tensor([index[f["obj"]] for f in test])
        rows: dict = {}
        for template in [relation["manual"], *relation["paraphrases"]]:
            if template.startswith("[X]"):
                before, after = (embeddings[ids(part)] for part in template[len("[X]"):].split("[Y]"))
                with torch.no_grad():
                    predicted = log_probs(test, before, after, candidates).argmax(-1)
                rows[template] = round(100 * (predicted == gold).float().mean().item(), 1)
        for lengths in args.lengths.split(","):
            first, second = (int(n) for n in lengths.split("+"))
            logits = torch.zeros(first + second, len(shared))
            if args.init_gap:
                logits[torch.arange(len(logits)), torch.randint(len(shared), (len(logits),))] = args.init_gap
            logits.requires_grad_(True)
            optimizer = torch.optim.Adam([logits], lr=args.lr)
            for _ in range(args.steps):
                batch = generator.sample(train, min(16, len(train)))
                target = torch.tensor([index[f["obj"]] for f in batch])
                soft = logits.softmax(-1) @ embeddings[shared_ids]
                loss = -log_probs(batch, soft[:first], soft[first:], candidates).gather(1, target[:, None]).mean()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            with torch.no_grad():
                soft = logits.softmax(-1) @ embeddings[shared_ids]
                predicted = log_probs(test, soft[:first], soft[first:], candidates).argmax(-1)
            words = " ".join(tokenizer.convert_ids_to_tokens(shared_ids[logits.argmax(-1)].tolist()))
            rows[f"learned, {first} + {second} soft tokens"] = {
                "P@1": round(100 * (predicted == gold).float().mean().item(), 1), "argmax words": words}
        report[name] = rows
    return report


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(1)
    report = prompts_report(args) if args.command == "prompts" else hull_report(args)
    print(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
