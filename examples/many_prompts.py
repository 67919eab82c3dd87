"""Many prompts in one batch: train one P-tuning adapter per relation together, then serve them all in one forward.

Runs offline on a CPU in seconds on a tiny random BERT built from a config (prompt_adapters.testing), so the gains
are small; the point is the mechanism. Each relation has its
own adapter; ``fit_joint`` trains them in one batched loop (each with its own optimiser, schedule and early stopping,
the same result as training them one by one), and a mixed batch, each row naming its adapter, scores every relation
at once. With a real checkpoint, replace the model lines by ``AutoModelForMaskedLM.from_pretrained(...)``.
"""

from __future__ import annotations

import torch
from peft import get_peft_model

from prompt_adapters import PromptCollator, PTuningEncoderConfig
from prompt_adapters.testing import build_tiny_model, widen_weights
from prompt_adapters.training import JointTask, TrainSettings, fit_joint, precision_at_1, rank_answers

#: two relations over the same people: each adapter must learn its own mapping
PEOPLE = ["Dante", "Obama", "Einstein", "Newton", "Bach", "Curie"]
RELATIONS = {
    "born_in": (["Paris", "London", "Rome", "Berlin", "Oslo", "Vienna"], "[P*2] [X] was born in [Y] ."),
    "speaks": (["English", "French", "German", "Italian", "Spanish", "Dutch"], "[P*3] [X] speaks [Y] ."),
}


def main() -> None:
    torch.manual_seed(0)
    base, tokenizer = build_tiny_model("bert")
    widen_weights(base)
    object_ids = [tokenizer(word, add_special_tokens=False)["input_ids"][0] for objs, _ in RELATIONS.values()
                   for word in objs]
    candidates = torch.tensor(sorted(object_ids))  # answers are scored among the relations' objects
    model = None
    tasks = []
    for relation, (objects, template) in RELATIONS.items():
        config = PTuningEncoderConfig(templates=[template], encoder="lstm", tokenizer=tokenizer)
        if model is None:
            model = get_peft_model(base, config, adapter_name=relation)
        else:
            model.add_adapter(relation, config)
        facts = [{"sub": person, "obj": obj} for person, obj in zip(PEOPLE, objects, strict=True)]
        collator = PromptCollator(tokenizer, model, adapter_name=relation, candidate_ids=candidates)
        settings = TrainSettings(epochs=40, learning_rate=0.01, batch_size=3, patience=None)
        tasks.append(JointTask(relation, collator, facts, facts, settings))

    before = {}
    for task in tasks:
        model.set_adapter(task.adapter)
        before[task.adapter] = precision_at_1(rank_answers(model, task.collator, task.train))
    results = fit_joint(model, tasks, progress=False)
    for task in tasks:
        print(f"{task.adapter:<10} P@1 before {before[task.adapter]:.2f}, after {results[task.adapter].best_dev:.2f}")

    # One forward serves both relations: every example names its adapter, the collator passes adapter_names on.
    first = tasks[0].collator
    for task in tasks[1:]:
        first.add_collator(task.collator)
    mixed = [{"sub": person, "adapter": task.adapter} for task in tasks for person in PEOPLE[:3]]
    batch = first(mixed)
    with torch.no_grad():
        predicted = candidates[model(**batch).answer_log_probs.argmax(-1)]
    print("\none mixed batch, rows:", batch["adapter_names"])
    for example, token in zip(mixed, tokenizer.convert_ids_to_tokens(predicted.tolist()), strict=True):
        print(f"  {example['adapter']:<10} {example['sub']:<10} -> {token}")


if __name__ == "__main__":
    main()
