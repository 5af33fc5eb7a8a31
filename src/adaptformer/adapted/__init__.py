"""The adapted model, one concern: ``AdaptedModel`` (a frozen backbone and its named tasks, ``model.py``), the hooks
it installs on the backbone's blocks (``taps.py``) and the router that tells each hook which task to run, for one
task or a mixed-task batch (``routing.py``). Backbones (``backbones/``) only build, load and describe backbones;
methods (``methods/``) own their modules and heads."""
