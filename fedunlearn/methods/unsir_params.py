"""UNSIR's hyperparameters and the impair / repair recipe each mode derives from them (the server and the clients
alike, so no hyperparameter travels in the messages). Kept apart from unsir.py, which holds the method, its client
steps and the long docstring on the paper and our departures."""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

from pydantic import Field

from fedunlearn.methods.base import MethodParams

LOW_LR = 1e-4
NOTEBOOK_NOISE_RATIO = 20 * 256 * 2 / 8000  # the official notebook: 10,240 noise records against 8,000 retained


class UNSIRParams(MethodParams):
    profile: Literal["default", "low_lr"] = Field("default", description="low_lr: 1e-4 for impair and repair")
    noise_samples: int = Field(256, ge=1, description="class mode: inputs per noise batch")
    noise_steps: int = Field(40, ge=1, description="class mode: Adam steps fitting each noise batch")
    noise_lr: float = Field(0.1, gt=0, description="class mode: Adam lr of the noise")
    noise_reg: float = Field(0.1, ge=0, description="class mode: weight of mean ‖N_i‖²")
    noise_copies: int = Field(20, ge=0, description="class mode: copies of each noise batch (noise_volume = "
                                                     "'absolute'); 0 = ablation (impair on retained data only)")
    noise_volume: Literal["ratio", "absolute"] = Field(
        "ratio", description="class mode: 'ratio' = noise_ratio noise records per retained record of each client "
                             "(our choice); 'absolute' = noise_copies x noise_samples per class (notebook)")
    noise_ratio: float = Field(NOTEBOOK_NOISE_RATIO, gt=0, description="class mode: noise records per retained "
                                                                       "record (default the notebook's 10,240/8,000)")
    sample_noise_steps: int = Field(5, ge=1, description="client mode: Adam steps per forget batch")
    sample_noise_lr: float = Field(0.01, gt=0, description="client mode: Adam lr of the noise")
    sample_noise_copies: int = Field(1, ge=0, description="client mode: noise inputs paired with each retained "
                                                           "record (reference 1); 0 = ablation (retained only)")
    sample_impair_lr: float = Field(0.3, ge=0, description="client mode: plain-SGD lr of the impair (calibrated on "
                                                          "the quickstart, 3x its train.lr); 0 = the recipe's step "
                                                          "train.lr / (1 - train.momentum)")
    sample_repair_lr: float = Field(0.0, ge=0, description="client mode: plain-SGD lr of the repair; 0 = the "
                                                           "recipe's step train.lr / (1 - train.momentum) (our "
                                                           "reading)")
    sample_impair_epochs: int = Field(2, ge=1, description="client mode: impair epochs per round (UNSIR-1: 2)")
    sample_repair_epochs: int = Field(1, ge=1, description="client mode: repair epochs per round (UNSIR-1: 1)")
    per_class: int = Field(1000, ge=1, description="retained samples per class each client uses")
    impair_lr: float = Field(0.02, gt=0, description="class mode: Adam lr of the impair (notebook)")
    repair_lr: float = Field(0.01, gt=0, description="class mode: Adam lr of the repair (notebook)")
    batch_size: int | None = Field(None, ge=1, description="impair/repair batch and client mode's forget batches; "
                                                           "None = the training recipe's batch size")
    impair_epochs: int = Field(1, ge=1, description="class mode: impair epochs per round (notebook: 1)")
    repair_epochs: int = Field(3, ge=1, description="class mode: repair epochs per round (notebook: 1; ours keeps "
                                                    "retained accuracy within 2 points on digits)")
    impair_rounds: int = Field(1, ge=1, description="impair FedAvg rounds; client mode: u refits the noise before "
                                                    "each (our choice)")
    repair_rounds: int = Field(3, ge=0, description="repair FedAvg rounds (notebook: one pass; our choice)")

    @property
    def lrs(self) -> tuple[float, float]:
        """Class mode's (impair lr, repair lr) after the profile."""
        return (LOW_LR, LOW_LR) if self.profile == "low_lr" else (self.impair_lr, self.repair_lr)

    def sample_lrs(self, train_lr: float, momentum: float = 0.0) -> tuple[float, float]:
        """Client mode's (impair lr, repair lr) after the profile; an unset one is the training recipe's effective
        step lr / (1 - momentum) (UNSIR-1: plain SGD 0.001 = its recipe's final 1e-4 with momentum 0.9)."""
        if self.profile == "low_lr":
            return LOW_LR, LOW_LR
        step = train_lr / (1.0 - momentum)
        return (self.sample_impair_lr or step, self.sample_repair_lr or step)

    def recipe(self, train: Any, class_mode: bool) -> Recipe:
        """The impair / repair recipe of one mode, from these params and the training recipe ``train``: the server
        and the clients derive it alike, so no hyperparameter travels in the messages."""
        batch = self.batch_size or train.batch_size
        if class_mode:
            impair_lr, repair_lr = self.lrs
            ratio = self.noise_ratio if self.noise_volume == "ratio" else 0.0  # 0 = absolute volume
            return Recipe(self.noise_copies, ratio, impair_lr, repair_lr, self.impair_epochs, self.repair_epochs,
                          batch)
        impair_lr, repair_lr = self.sample_lrs(train.lr, train.momentum)
        return Recipe(self.sample_noise_copies, 0.0, impair_lr, repair_lr, self.sample_impair_epochs,
                      self.sample_repair_epochs, batch)


class Recipe(NamedTuple):
    """One mode's impair and repair settings (class mode: Adam repair and class-labelled noise; client mode: plain
    SGD and noise labelled with the paired retained records' labels)."""

    copies: int
    ratio: float
    impair_lr: float
    repair_lr: float
    impair_epochs: int
    repair_epochs: int
    batch_size: int
