"""robofm: Vision-Language-Action policies, from pretrained backbones to a robot.

The package is organised by role (see DESIGN.md): contracts (`types`, `spaces`, `config`),
data, models, training, simulation, evaluation, serving and deployment. Importing `robofm`
is cheap: heavy dependencies (torch, transformers, mujoco) load only in the modules that need them.
"""

__version__ = "0.1.0"
