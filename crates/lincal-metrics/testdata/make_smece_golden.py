"""Golden smooth-ECE values from relplot 1.0.3 for lincal-metrics' tests (tests/smooth_ece.rs).

  python -m venv /tmp/relplot-venv
  /tmp/relplot-venv/bin/pip install relplot==1.0.3 numpy scipy
  /tmp/relplot-venv/bin/python make_smece_golden.py smece_golden.json

For each seeded dataset it records the inputs, relplot.smECE(f, y, return_width=True) (the
automatic bandwidth and the value there), relplot.smECE_sigma(f, y, sigma) at fixed bandwidths,
and the smoothed reliability curve t - rs(t) with its density on relplot's 200-point plot mesh
at the automatic bandwidth. relplot's defaults throughout (ReflectedGaussianKernel, no logit
scaling). Fixed seeds: a rerun writes the same numbers with the same library versions."""
import importlib.metadata
import importlib.util
import json
import sys
import types

import numpy as np
import scipy


def load_relplot():
    """relplot.metrics and relplot.kernels. relplot's __init__ also imports its plotting
    modules (matplotlib, pandas, seaborn, scikit-learn); where those are not installed, only the
    two modules the metric needs are loaded."""
    try:
        import relplot
        import relplot.kernels
        import relplot.metrics
        return relplot.metrics, relplot.kernels
    except ImportError:
        pass
    location = importlib.util.find_spec("relplot").submodule_search_locations
    package = types.ModuleType("relplot")
    package.__path__ = list(location)
    sys.modules["relplot"] = package
    if importlib.util.find_spec("deprecation") is None:
        # kernels.py imports this decorator but applies it to nothing the metric uses.
        stub = types.ModuleType("deprecation")
        stub.deprecated = lambda *args, **kwargs: (lambda f: f)
        sys.modules["deprecation"] = stub
    import relplot.kernels
    import relplot.metrics
    return relplot.metrics, relplot.kernels


FIXED_SIGMAS = [0.3, 0.1, 0.05, 0.02, 0.009, 0.004]
LEVELS = np.array([0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0])


def datasets():
    """(name, confidences, outcomes). Confidences are rounded to 6 decimals so that the JSON
    stays small and both sides read the same numbers."""
    rng = np.random.default_rng(20230519)
    out = []

    f = rng.uniform(0, 1, 12)
    out.append(("tiny_12", f, rng.uniform(0, 1, 12) < 0.5))

    f = rng.uniform(0.3, 1.0, 100)
    out.append(("overconfident_100", f, rng.uniform(0, 1, 100) < 0.8 * f))

    f = rng.beta(5, 2, 400)
    out.append(("beta_calibrated_400", f, rng.uniform(0, 1, 400) < f))

    f = rng.uniform(0, 1, 2000)
    out.append(("calibrated_2000", f, rng.uniform(0, 1, 2000) < f))

    f = LEVELS[rng.integers(0, len(LEVELS), 600)]
    out.append(("verbal_levels_ties_600", f, rng.uniform(0, 1, 600) < f * f))

    f = rng.choice([0.8, 0.9, 1.0], 150)
    out.append(("all_correct_ties_150", f, np.ones(150, dtype=bool)))

    out.append(("all_certain_and_correct_50", np.ones(50), np.ones(50, dtype=bool)))

    f = np.concatenate([np.zeros(30), np.ones(30), rng.uniform(0, 1, 240)])
    out.append(("edges_0_and_1_300", f, rng.uniform(0, 1, 300) < 0.7))

    f = LEVELS[rng.integers(0, len(LEVELS), 4000)]
    out.append(("verbal_levels_calibrated_4000", f, rng.uniform(0, 1, 4000) < f))

    return [(name, np.round(f, 6), y.astype(np.float64)) for name, f, y in out]


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    metrics, kernels = load_relplot()
    import relplot.config as config
    cases = []
    for name, f, y in datasets():
        value, width = metrics.smECE(f, y, return_width=True)
        t = np.linspace(0, 1, config.plot_mesh_pts)
        rs, density = kernels.ReflectedGaussianKernel(width).smooth(f, f - y, t)
        cases.append({
            "name": name,
            "confidence": f.tolist(),
            "correct": [int(v) for v in y],
            "smece": float(value),
            "bandwidth": float(width),
            "fixed": [{"bandwidth": s, "smece": float(metrics.smECE_sigma(f, y, s))}
                      for s in FIXED_SIGMAS],
            "curve_mu": (t - rs).tolist(),
            "curve_density": density.tolist(),
        })
        print(f"{name}: smECE {value:.6f} at bandwidth {width}", file=sys.stderr)
    versions = {"relplot": importlib.metadata.version("relplot"), "numpy": np.__version__, "scipy": scipy.__version__}
    with open(sys.argv[1], "w") as out:
        json.dump({"versions": versions, "cases": cases}, out, separators=(",", ":"))
        out.write("\n")


if __name__ == "__main__":
    main()
