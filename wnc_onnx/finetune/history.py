"""The record of a fine-tuning run: one row per epoch, as JSON and as a table."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any


@dataclass
class EpochRecord:
    epoch: int  # 1-based
    lr: float
    train_loss: float
    val_loss: float | None
    val_accuracy: float | None
    seconds: float  # training time of the epoch (validation not included)
    samples_per_s: float
    # --pq-lambda: the penalty and relative distance ||W - Q(W)|| / ||W|| after the epoch,
    # and the validation accuracy with the weights product-quantized (as they would be exported)
    pq_penalty: float | None = None
    pq_distance: float | None = None
    pq_val_accuracy: float | None = None
    # distillation: the validation data's top-1 agreement with the teacher, and the seconds the
    # teacher took of the epoch's training time
    val_agreement: float | None = None
    teacher_seconds: float | None = None


@dataclass
class History:
    epochs: list[EpochRecord] = field(default_factory=list)
    initial_val_accuracy: float | None = None  # the compressed model before fine-tuning
    initial_val_loss: float | None = None
    reference_val_accuracy: float | None = None  # the original (uncompressed) model, when given
    runtime: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    resumed_at: list[int] = field(default_factory=list)  # epochs (0-based) where a run was resumed
    final: dict[str, float] = field(default_factory=dict)  # the exported model scored by plain inference
    initial_pq_val_accuracy: float | None = None  # --pq-lambda: the model quantized before training
    pq: dict[str, Any] = field(default_factory=dict)  # --pq-lambda: settings, bytes, per weight
    initial_val_agreement: float | None = None  # distillation: before training
    distill: dict[str, Any] = field(default_factory=dict)  # distillation: its terms, temperature, alpha
    warnings: list[str] = field(default_factory=list)  # what the run noticed (a loss that rose)
    int8: dict[str, Any] = field(default_factory=dict)  # --int8: the tuned model quantized again

    def to_dict(self) -> dict[str, Any]:
        return {
            "runtime": self.runtime,
            "config": self.config,
            "reference": {"val_accuracy": self.reference_val_accuracy},
            "initial": {
                "val_loss": self.initial_val_loss,
                "val_accuracy": self.initial_val_accuracy,
                "pq_val_accuracy": self.initial_pq_val_accuracy,
                "val_agreement": self.initial_val_agreement,
            },
            "epochs": [asdict(e) for e in self.epochs],
            "resumed_at": self.resumed_at,
            "final": self.final,
            "pq": self.pq,
            "distill": self.distill,
            "warnings": self.warnings,
            "int8": self.int8,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> History:
        names = {f.name for f in fields(EpochRecord)}
        return cls(
            epochs=[EpochRecord(**{k: v for k, v in e.items() if k in names}) for e in d.get("epochs", [])],
            initial_val_accuracy=d.get("initial", {}).get("val_accuracy"),
            initial_val_loss=d.get("initial", {}).get("val_loss"),
            reference_val_accuracy=d.get("reference", {}).get("val_accuracy"),
            runtime=d.get("runtime", ""),
            config=d.get("config", {}),
            resumed_at=list(d.get("resumed_at", [])),
            final=dict(d.get("final", {})),
            initial_pq_val_accuracy=d.get("initial", {}).get("pq_val_accuracy"),
            pq=dict(d.get("pq", {})),
            initial_val_agreement=d.get("initial", {}).get("val_agreement"),
            distill=dict(d.get("distill", {})),
            warnings=list(d.get("warnings", [])),
            int8=dict(d.get("int8", {})),
        )

    def to_table(self) -> str:
        def pct(v: float | None) -> str:
            return "-" if v is None else f"{100 * v:.2f}%"

        def num(v: float | None) -> str:
            return "-" if v is None else f"{v:.4f}"

        pq = any(e.pq_distance is not None for e in self.epochs) or self.initial_pq_val_accuracy is not None
        agree = any(e.val_agreement is not None for e in self.epochs) or self.initial_val_agreement is not None
        rows = ["epoch  lr         train loss  val loss  val acc   seconds  samples/s"]
        if agree:
            rows[0] += "  agreement"
        if pq:
            rows[0] += "  PQ dist  PQ val acc"
        if self.reference_val_accuracy is not None:
            rows.append(f"{'orig':<6} {'':<10} {'':<11} {'':<9} {pct(self.reference_val_accuracy):<9}")
        if self.initial_val_loss is not None:
            row = f"{0:<6} {'':<10} {'':<11} {num(self.initial_val_loss):<9} {pct(self.initial_val_accuracy):<9}"
            if agree:
                row = f"{row:<66}  {pct(self.initial_val_agreement)}"
            if pq:
                row = f"{row:<66}  {'':<7}  {pct(self.initial_pq_val_accuracy)}"
            rows.append(row)
        for e in self.epochs:
            row = (
                f"{e.epoch:<6} {e.lr:<10.3g} {e.train_loss:<11.4f} {num(e.val_loss):<9} {pct(e.val_accuracy):<9} "
                f"{e.seconds:<8.1f} {e.samples_per_s:<9.0f}"
            )
            if agree:
                row += f"  {pct(e.val_agreement)}"
            if pq:
                row += f"  {num(e.pq_distance):<7}  {pct(e.pq_val_accuracy)}"
            rows.append(row)
        if self.pq.get("totals"):
            t = self.pq["totals"]
            rows.append(
                f"product-quantized {t['quantized']} weight(s): {t['bytes_before']} -> {t['bytes_after']} bytes "
                f"(x{t['ratio']:.1f}, codebooks counted)"
            )
        return "\n".join(rows)
