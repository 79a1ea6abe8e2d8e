"""The online methods by name: each method's file registers its class here; the CLI's choices and flags come from
here, so that a new method is one new file."""
from models.adaptation.base import OnlineMethod, SettingError

METHODS: dict = {}  # name -> OnlineMethod subclass


def register(method: type) -> type:
    """Class decorator: make a method available under its `name`."""
    METHODS[method.name] = method
    return method


def method_class(name: str) -> type:
    """The class registered as `name`; SettingError for an unknown name."""
    if name not in METHODS:
        raise SettingError('method', f'must be one of {", ".join(sorted(METHODS))}, got {name!r}')
    return METHODS[name]


def online_settings(name: str) -> dict:
    """{setting: Setting} of a method, with the publication's defaults."""
    return dict(method_class(name).SETTINGS)


def check_online_settings(name: str, reset: str | None = None, **settings) -> dict:
    """The resolved settings (reset included) of a method; SettingError naming the first bad one."""
    return method_class(name).resolve(reset, settings)


def build_online_method(name: str, model, layers: list | None = None, reset: str | None = None,
                        **settings) -> OnlineMethod:
    """Wrap `model` for online use: method(images) adapts as `name` prescribes, then returns the logits.

    layers: the (name, BatchNorm) pairs to adapt (default: the UBNA encoder's, else all); reset: 'episodic' or
    'continual' (default: the method's); settings override the publication's defaults.
    """
    return method_class(name)(model, layers, reset, **settings)


def setting_flags() -> dict:
    """{setting: (type, help)} over all methods, for one command-line flag per setting."""
    flags = {}
    for name in sorted(METHODS):
        for setting, spec in METHODS[name].SETTINGS.items():
            kind, lines = flags.get(setting, (type(spec.default), []))
            flags[setting] = (kind, lines + [f'{name}: {spec.help} ({spec.default})'])
    return {setting: (kind, '; '.join(lines)) for setting, (kind, lines) in flags.items()}
