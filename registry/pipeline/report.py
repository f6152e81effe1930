"""`genreg report`: likelihood beside likelihood-free checks for every stored model on a data set.

For the newest version of each model trained on the data: test bits/dim (or "none"), the
k-NN C2ST accuracy and MMD p-value of test rows against as many samples, the JSD lower
bound from the model's discriminator (its own, or a critic from `genreg critic`), a PNG grid
of samples, and a scatter plot of bits/dim against C2ST accuracy (SVG, no plotting library).
"""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any

from registry.runtime.models import LoadedModel
from registry.runtime.png import png_grid
from registry.runtime.store import StoredModel, list_models


def newest_on(data_name: str) -> list[StoredModel]:
    seen: dict[str, StoredModel] = {}
    for stored in list_models():  # newest first within each name
        if stored.data["name"] == data_name and stored.name not in seen:
            seen[stored.name] = stored
    return list(seen.values())


def _row(stored: StoredModel) -> dict[str, Any]:
    test = stored.metrics.get("test", {})
    two = test.get("two_sample", {})
    critic = stored.metrics.get("critic", {})
    jsd = critic.get("jsd_lower_bound", two.get("jsd", {}).get("jsd_lower_bound"))
    units = test.get("latent")
    return {
        "model": stored.tag,
        "family": stored.family,
        "bits_per_dim": test.get("bits_per_dim"),
        "kind": test.get("kind", "none"),
        "c2st": two.get("c2st", {}).get("accuracy"),
        "mmd_p": two.get("mmd", {}).get("p_value"),
        "critic_accuracy": critic.get("c2st_accuracy"),
        "jsd": jsd,
        "active_units": f"{units['active_units']}/{len(units['kl_per_dim'])}" if units else None,
        "latent": units,
    }


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "none"
    if isinstance(value, float):
        return (
            f"{value:.{digits}g}"
            if abs(value) >= 1000 or (value != 0 and abs(value) < 1e-3)
            else f"{value:.{digits}f}"
        )
    return str(value)


COLUMNS = [
    ("model", "model"),
    ("family", "family"),
    ("bits_per_dim", "test bits/dim"),
    ("kind", "score"),
    ("c2st", "C2ST accuracy (k-NN)"),
    ("mmd_p", "MMD p-value"),
    ("critic_accuracy", "critic accuracy"),
    ("jsd", "JSD >= (nats)"),
    ("active_units", "active units"),
]


def latent_lines(rows: list[dict[str, Any]]) -> list[str]:
    """Each VAE's per-dimension KL(q(z_i|x)||p(z_i)), largest first, active ones starred."""
    lines = []
    for r in rows:
        units = r.get("latent")
        if not units:
            continue
        kl, active = units["kl_per_dim"], units["active"]
        order = sorted(range(len(kl)), key=lambda i: -kl[i])
        dims = ", ".join(f"z{i} {kl[i]:.3f}{'*' if active[i] else ''}" for i in order)
        lines.append(f"{r['model']}: {dims}")
    return lines


def scatter_svg(rows: list[dict[str, Any]], width: int = 560, height: int = 360) -> str:
    """Test bits/dim (log scale) against C2ST accuracy, one labelled point per model."""
    pts = [
        r for r in rows if r["bits_per_dim"] is not None and r["c2st"] is not None and r["bits_per_dim"] > 0
    ]
    pad = 60
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="11">'
    ]
    parts.append(f'<rect width="{width}" height="{height}" fill="white"/>')
    parts.append(
        f'<line x1="{pad}" y1="{height - pad}" x2="{width - 20}" y2="{height - pad}" stroke="black"/>'
    )
    parts.append(f'<line x1="{pad}" y1="20" x2="{pad}" y2="{height - pad}" stroke="black"/>')
    parts.append(
        f'<text x="{width / 2}" y="{height - 20}" text-anchor="middle">C2ST accuracy (0.5 = samples indistinguishable from data)</text>'
    )
    parts.append(
        f'<text x="15" y="{height / 2}" transform="rotate(-90 15 {height / 2})" text-anchor="middle">test bits/dim (log scale)</text>'
    )
    if pts:
        lo = math.log10(min(r["bits_per_dim"] for r in pts))
        hi = math.log10(max(r["bits_per_dim"] for r in pts))
        hi = hi if hi > lo else lo + 1
        for tick in (0.5, 0.75, 1.0):
            x = pad + (tick - 0.5) / 0.5 * (width - pad - 40)
            parts.append(f'<text x="{x:.0f}" y="{height - pad + 15}" text-anchor="middle">{tick}</text>')
        for r in pts:
            x = pad + (min(max(r["c2st"], 0.5), 1.0) - 0.5) / 0.5 * (width - pad - 40)
            y = height - pad - (math.log10(r["bits_per_dim"]) - lo) / (hi - lo) * (height - pad - 40)
            label = html.escape(f"{r['model'].split(':')[0]} ({r['bits_per_dim']:.3g})")
            parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="5" fill="#1f77b4"/>')
            parts.append(f'<text x="{x + 8:.1f}" y="{y + 4:.1f}">{label}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def write_report(data_name: str, out: Path, n_samples: int = 16, seed: int = 0) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    models = newest_on(data_name)
    if not models:
        raise ValueError(f"no stored model was trained on {data_name!r}")
    rows = []
    for stored in models:
        row = _row(stored)
        if stored.data.get("image_shape") and stored.graph("sampler") is not None:
            x = LoadedModel(stored, providers=["CPUExecutionProvider"]).sample(n_samples, seed=seed)
            name = f"samples-{stored.name}.png"
            (out / name).write_bytes(
                png_grid(x, tuple(stored.data["image_shape"]), high=stored.data.get("high") or 1.0)
            )
            row["grid"] = name
        rows.append(row)
    (out / "likelihood-vs-c2st.svg").write_text(scatter_svg(rows))
    md = [f"# genreg report: {data_name}", "", "| " + " | ".join(h for _, h in COLUMNS) + " | samples |"]
    md.append("|" + "---|" * (len(COLUMNS) + 1))
    for r in rows:
        cells = [_fmt(r[k]) for k, _ in COLUMNS]
        md.append("| " + " | ".join(cells) + f" | {'![](' + r['grid'] + ')' if 'grid' in r else ''} |")
    md += ["", "![likelihood vs C2ST](likelihood-vs-c2st.svg)", ""]
    latent = latent_lines(rows)
    if latent:
        md += [
            "## Latent dimensions",
            "",
            "KL(q(z_i|x) || p(z_i)) per dimension on the validation split (nats), largest first; * active "
            "(Cov_x E[z_i|x] > 0.01, Burda et al.). `genreg traverse` orders its rows so.",
            "",
            *[f"- {line}" for line in latent],
            "",
        ]
    (out / "report.md").write_text("\n".join(md))
    head = (
        "".join(f"<th scope='col'>{html.escape(h)}</th>" for _, h in COLUMNS) + "<th scope='col'>samples</th>"
    )
    body = "".join(
        "<tr>"
        + "".join(f"<td>{html.escape(_fmt(r[k]))}</td>" for k, _ in COLUMNS)
        + (
            f"<td><img src='{r['grid']}' alt='samples of {html.escape(r['model'])}'></td>"
            if "grid" in r
            else "<td></td>"
        )
        + "</tr>"
        for r in rows
    )
    page = (
        f"<!doctype html><html lang='en'><meta charset='utf-8'><title>genreg report: {html.escape(data_name)}</title>"
        "<style>body{font-family:sans-serif;margin:2em}td,th{border:1px solid #ccc;padding:4px 8px}"
        "table{border-collapse:collapse}</style>"
        f"<h1>genreg report: {html.escape(data_name)}</h1><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
        "<h2>Likelihood against C2ST accuracy</h2><img src='likelihood-vs-c2st.svg' alt='scatter plot'>"
        + (
            "<h2>Latent dimensions</h2><p>KL(q(z_i|x) || p(z_i)) per dimension on the validation split "
            "(nats), largest first; * active</p><ul>"
            + "".join(f"<li>{html.escape(line)}</li>" for line in latent)
            + "</ul>"
            if latent
            else ""
        )
        + "</html>"
    )
    (out / "report.html").write_text(page)
    return out / "report.md"
