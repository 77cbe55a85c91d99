//! Real packages with native code run in every sandbox: the runtime images carry
//! the system libraries that manylinux wheels and prebuilt Node.js addons may
//! take from the system (libstdc++, libgcc_s, libgomp, zlib; docs/architecture.md,
//! "Runtime images"). Each package is exercised and its output checked, so a
//! missing library (an `ImportError` on `libstdc++.so.6`) or a broken install fails.
//! Needs PyPI and the npm registry (reachable from our machines and CI).
//!
//! One server per sandbox kind deploys both functions: each server has a fresh
//! data directory, so the installs are its own; only the installers' downloads
//! are repeated, not shared.

use faas_tester::{executor_tests, require, Executor, TestServer};
use serde_json::{json, Value};

executor_tests!(binary_packages_run);

/// Pinned to releases with CPython 3.11 manylinux x86_64 wheels (the installer
/// takes binary wheels only).
const PYTHON_DEPENDENCIES: [&str; 7] = [
    "numpy==2.1.3",
    "pandas==2.2.3",
    "scipy==1.14.1",
    "python-igraph==0.11.8",
    "pillow==11.0.0",
    "jinja2==3.1.4",
    "contourpy==1.3.1",
];

/// The imports are in the handler, not at module level: loading a handler must
/// finish within the sandbox's start timeout (60 s for a microVM), and under QEMU
/// TCG importing numpy, pandas and scipy can take a large part of that; the
/// invocation is bounded by the function's own `timeout_sec` instead.
const PYTHON_HANDLER: &str = r#"import io


def handler(event, context):
    import contourpy
    import igraph
    import jinja2
    import numpy as np
    import pandas as pd
    from PIL import Image
    from scipy import linalg, optimize

    product = (np.array([[1, 2], [3, 4]]) @ np.array([[5, 6], [7, 8]])).tolist()
    frame = pd.DataFrame({"k": ["a", "b", "a", "b", "a"], "v": [1, 2, 3, 4, 5]})
    sums = {k: int(v) for k, v in frame.groupby("k")["v"].sum().items()}
    solved = [round(float(x), 9) for x in linalg.solve([[3.0, 1.0], [1.0, 2.0]], [9.0, 8.0])]
    root = optimize.brentq(lambda x: x * x - 2.0, 0.0, 2.0)
    graph = igraph.Graph(edges=[(0, 1), (1, 2), (2, 3), (0, 3), (3, 4)])
    path = graph.get_shortest_paths(0, to=4)[0]
    image = Image.new("RGB", (64, 32), (200, 30, 60)).resize((16, 8))
    png = io.BytesIO()
    image.save(png, "PNG")
    decoded = Image.open(io.BytesIO(png.getvalue()))
    contour = contourpy.contour_generator(z=np.array([[0.0, 1.0], [1.0, 2.0]]))
    lines = [sorted(map(tuple, line.tolist())) for line in contour.lines(0.5)]
    text = jinja2.Template("{{ who }}: {% for n in ns %}{{ n * 2 }} {% endfor %}").render(
        who="doubled", ns=[1, 2, 3]
    )
    return {
        "product": product,
        "sums": sums,
        "solved": solved,
        "root": root,
        "path": path,
        "image": [decoded.format, list(decoded.size), list(decoded.getpixel((5, 5)))],
        "contour": lines,
        "template": text,
        "files": [m.__file__ for m in (np, pd, igraph, jinja2, contourpy, linalg, Image)],
    }
"#;

/// sharp 0.33 ships libvips and its addon as prebuilt optional dependencies
/// (`@img/sharp-linux-x64`, `@img/sharp-libvips-linux-x64`): no install script,
/// so `npm install --ignore-scripts` is enough. lodash is the pure-JS control.
const NODE_DEPENDENCIES: [&str; 2] = ["sharp@0.33.5", "lodash@4.17.21"];

const NODE_HANDLER: &str = r#"exports.handler = async () => {
  const sharp = require('sharp');
  const _ = require('lodash');
  const red = { create: { width: 64, height: 32, channels: 3, background: { r: 200, g: 30, b: 60 } } };
  const png = await sharp(red).png().toBuffer();
  const resized = await sharp(png).resize(16, 8).png().toBuffer();
  const meta = await sharp(resized).metadata();
  const { data } = await sharp(resized).raw().toBuffer({ resolveWithObject: true });
  return {
    image: [meta.format, meta.width, meta.height, [data[0], data[1], data[2]]],
    chunks: _.chunk([1, 2, 3, 4, 5], 2),
    files: [require.resolve('sharp'), require.resolve('lodash')],
  };
};
"#;

async fn binary_packages_run(executor: Executor) {
    if !require(executor, "binary_packages_run") {
        return;
    }
    // Under TCG a guest runs 10-30x slower: room for the imports and the
    // interpreter's memory beside the guest kernel's.
    let limits = if executor.is_vm() {
        json!({"timeout_sec": 300, "memory_mb": 512})
    } else {
        json!({"timeout_sec": 60, "memory_mb": 512})
    };
    let s = TestServer::start(executor).await;

    let mut py = limits.clone();
    py["dependencies"] = json!(PYTHON_DEPENDENCIES);
    s.deploy(
        "scientific",
        "python",
        "pkgs.handler",
        &[("pkgs.py", PYTHON_HANDLER)],
        py,
    )
    .await;
    let v = s.invoke_json("scientific", json!(null)).await;
    assert_eq!(v["product"], json!([[19, 22], [43, 50]]), "numpy: {v}");
    assert_eq!(v["sums"], json!({"a": 9, "b": 6}), "pandas: {v}");
    assert_eq!(v["solved"], json!([2.0, 3.0]), "scipy.linalg: {v}");
    let root = v["root"].as_f64().expect("root");
    assert!(
        (root - std::f64::consts::SQRT_2).abs() < 1e-9,
        "scipy.optimize: {v}"
    );
    assert_eq!(v["path"], json!([0, 3, 4]), "igraph: {v}");
    assert_eq!(
        v["image"],
        json!(["PNG", [16, 8], [200, 30, 60]]),
        "Pillow: {v}"
    );
    assert_eq!(
        v["contour"],
        json!([[[0.0, 0.5], [0.5, 0.0]]]),
        "contourpy: {v}"
    );
    assert_eq!(v["template"], "doubled: 2 4 6 ", "jinja2: {v}");
    assert_all_from_layer(&v);

    let mut js = limits;
    js["dependencies"] = json!(NODE_DEPENDENCIES);
    s.deploy(
        "imaging",
        "node",
        "i.handler",
        &[("i.js", NODE_HANDLER)],
        js,
    )
    .await;
    let v = s.invoke_json("imaging", json!(null)).await;
    assert_eq!(
        v["image"],
        json!(["png", 16, 8, [200, 30, 60]]),
        "sharp: {v}"
    );
    assert_eq!(v["chunks"], json!([[1, 2], [3, 4], [5]]), "lodash: {v}");
    assert_all_from_layer(&v);

    s.stop_and_check_clean().await;
}

/// Every module the function reports was loaded from its dependency layer, not
/// from anything the image might carry.
fn assert_all_from_layer(v: &Value) {
    let files = v["files"].as_array().expect("files");
    assert!(!files.is_empty(), "{v}");
    for f in files {
        assert!(
            f.as_str().unwrap().starts_with("/opt/faas/deps/"),
            "{f} is not in the layer: {v}"
        );
    }
}
