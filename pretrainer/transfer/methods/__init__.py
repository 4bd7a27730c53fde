"""Transfer methods, registered in `pretrainer.registry.TRANSFER_METHODS` (config key
`finetune.method`). A new method is one file here with a `TransferMethod` subclass, and its
import below."""

# Registration order is the order `pretrainer config` and error messages list the methods in.
from pretrainer.transfer.methods import full  # noqa: F401
from pretrainer.transfer.methods import freeze  # noqa: F401
from pretrainer.transfer.methods import llrd  # noqa: F401
from pretrainer.transfer.methods import probe  # noqa: F401
from pretrainer.transfer.methods import knn  # noqa: F401
from pretrainer.transfer.methods import lora  # noqa: F401
from pretrainer.transfer.methods import soft_prompt  # noqa: F401
from pretrainer.transfer.methods import cloze  # noqa: F401  (cloze and cloze_zero_shot)
from pretrainer.transfer.methods.base import TransferMethod

__all__ = ["TransferMethod"]
