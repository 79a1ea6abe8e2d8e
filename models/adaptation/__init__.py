"""BatchNorm adaptation for any network with BatchNorm layers: the offline schedules of adapt.py (offline.py,
registered by name) and the online methods of `evaluate.py --online-method` (one file each, registered by name in
registry.py). A network may name its adaptable layers itself (the protocol in layers.py).

    layers = batchnorm_layers(model, prefix='backbone.')         # or None: the UBNA encoder's, else every one
    adapt_batchnorm(model, batches, 'batch_shrinking', 0.1, 0.08, 0.0, layers=layers)      # offline
    method = build_online_method('cbna', model, layers=layers)   # online: settings default to the publication's
    logits = method(images)                                      # adapts on the images, then predicts them
"""
import importlib
import pkgutil

from models.adaptation.base import RESETS, OnlineMethod, Setting, SettingError, logits_of
from models.adaptation.layers import (affine_layers, batchnorm_layers, check_finite_statistics, default_layers,
                                      normalisation_layers, set_momenta)
from models.adaptation.offline import (MODES, SCHEDULES, Schedule, adapt_batchnorm, layer_momenta, prepare_batchnorm,
                                      register_schedule)
from models.adaptation.registry import (METHODS, build_online_method, check_online_settings, online_settings,
                                        register, setting_flags)

for _module in pkgutil.iter_modules(__path__):  # every method's file registers itself when imported
    importlib.import_module(f'{__name__}.{_module.name}')

ONLINE_METHODS = tuple(sorted(METHODS))

__all__ = ['MODES', 'ONLINE_METHODS', 'RESETS', 'SCHEDULES', 'OnlineMethod', 'Schedule', 'Setting', 'SettingError',
           'adapt_batchnorm', 'affine_layers', 'batchnorm_layers', 'build_online_method', 'check_finite_statistics',
           'check_online_settings', 'default_layers', 'layer_momenta', 'logits_of', 'normalisation_layers',
           'online_settings', 'prepare_batchnorm', 'register', 'register_schedule', 'set_momenta', 'setting_flags']
