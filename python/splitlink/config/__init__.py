"""FLYamlData: one party's sub-network described in YAML, validated strictly.

The schema is MindSpore Federated's vertical YAML (their files load unchanged, apart from ``opts[].type``,
which names a ``torch.optim`` class or an optimizer registered with
:func:`splitlink.optim.register_optimizer`), plus what splitlink adds:

* ``deepspeed``: an inline DeepSpeed config mapping, or the path of a DeepSpeed JSON file (relative
  paths are relative to the YAML file);
* ``privacy.label_dp`` / ``privacy.embedding_dp`` options beyond ``eps`` (``seed``, ``id_key``,
  ``num_classes``; the Gaussian mechanism's ``clip_norm``, ``noise_multiplier``, ``delta``,
  ``num_samples``);
* ``compress_params`` next to ``compress_type``/``bit_num`` for the codec parameters MindSpore does not
  have (``block_size``, ``ratio``, ``stochastic``, ...).

Every problem in a file is reported at once, in one :class:`YamlConfigError` naming the file, the line,
the key path and what is allowed::

    invalid splitlink config leader_top.yaml (2 problems):
      line 12: model.train_net.inputs[2].bit_num: 9 is out of range; allowed: an integer 1..8
      line 40: opts[0].grads[0].output.name: 'los' is not an output of model.train_net (outputs: out, loss)
"""

from splitlink.config.fl_yaml import FLYamlData
from splitlink.config.yaml_errors import (
    YamlLines,
    parse_yaml_document,
    pydantic_problems,
    read_yaml_text,
)
from splitlink.errors import Problem, YamlConfigError

__all__ = ["FLYamlData", "Problem", "YamlConfigError", "YamlLines", "parse_yaml_document", "pydantic_problems", "read_yaml_text"]
