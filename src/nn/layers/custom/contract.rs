//! The contract between a user's `.wgsl` layer file and wgrad: the declarations in its `//!`
//! lines, the functions it must define, and the checks that turn every way of breaking the
//! contract into an error naming the file, the place and the fix.
//!
//! ```text
//! //! output: same                 (or a number of output features: `output: 10`)
//! //! input: 100                   (optional: the input features it requires)
//! //! param alpha: [in] = 0.25     (name: [dims] = init; dims are `in`, `out` or numbers;
//! //! param W: [in, out] = he       init: a number, he, xavier or normal(std))
//!
//! fn forward(n: u32, j: u32) -> real            // y[n, j]
//! fn backward(n: u32, i: u32) -> real           // ∂L/∂x[n, i]
//! fn backward_alpha(k: u32) -> real             // ∂L/∂alpha[k], one per param
//! ```

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use wgpu::naga;

use crate::gpu::kernel::{prelude, Entry, Shader};
use crate::gpu::Precision;

/// How the layer's output size follows from its input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputShape {
    /// The input's shape (an activation, a per-feature scale).
    Same,
    /// `[N, IN] → [N, K]`: K features per sample.
    Features(usize),
}

/// One dimension of a declared tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dim {
    /// The layer's input features per sample.
    In,
    /// Its output features per sample.
    Out,
    Fixed(usize),
}

/// How a declared tensor starts.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ParamInit {
    /// Every element this value.
    Constant(f64),
    /// N(0, std²).
    Normal(f64),
    /// N(0, 2/fan_in), fan_in = the first dimension.
    He,
    /// N(0, 1/fan_in).
    Xavier,
}

/// `param NAME: [dims] = init`
#[derive(Clone, Debug, PartialEq)]
pub struct ParamDecl {
    pub name: String,
    pub dims: Vec<Dim>,
    pub init: ParamInit,
}

/// What a layer file declares.
#[derive(Clone, Debug, PartialEq)]
pub struct Declarations {
    pub output: OutputShape,
    /// The input features it requires, if it says.
    pub input: Option<usize>,
    pub params: Vec<ParamDecl>,
}

/// The most tensors one layer may declare: the harness's offset table, `array<vec4<u32>, 4>`
/// (a uniform array needs 16-byte elements).
pub const MAX_TENSORS: usize = 16;

/// Names the harness defines, which a layer file may not reuse.
const PROVIDED: &[&str] = &[
    "x", "y", "dy", "batch", "in_size", "out_size", "tanh_r", "exp_r", "log_r", "real",
];

/// shaders/custom_layer.wgsl: the bindings, accessors and entry points around the user's code.
const HARNESS: &str = include_str!("../../../../shaders/custom_layer.wgsl");

/// A checked layer file: its declarations and the shader built from it. One per distinct
/// (name, source): see [`contract`].
#[derive(Debug)]
pub struct Contract {
    /// The file as the user named it (`wgsl:PATH`'s PATH).
    pub file: String,
    pub source: String,
    pub decl: Declarations,
    /// The user's text followed by the harness and the per-tensor code.
    pub shader: Shader,
    pub forward: Entry,
    pub forward_perturbed: Entry,
    pub backward_input: Entry,
    /// Per declared tensor, in order.
    pub backward_params: Vec<Entry>,
}

/// (file name, text)
type ContractKey = (String, String);

/// The checked contract of `source` (named `file` in messages), built once per distinct text:
/// a net resolves its layers many times, and a kernel cache keys shaders by name. Each
/// distinct text stays in memory for the life of the process, as the compiled pipelines do.
pub fn contract(file: &str, source: &str) -> Result<Arc<Contract>, String> {
    static BUILT: OnceLock<Mutex<HashMap<ContractKey, Arc<Contract>>>> = OnceLock::new();
    let built = BUILT.get_or_init(Default::default);
    let key = (file.to_string(), source.to_string());
    if let Some(c) = built.lock().expect("contract cache poisoned").get(&key) {
        return Ok(c.clone());
    }
    let decl = parse_declarations(source).map_err(|p| p.in_file(file))?;
    check_user_text(source, &decl).map_err(|p| p.in_file(file))?;
    let bare = assemble(source, &decl, false);
    let full = assemble(source, &decl, true);
    for precision in [Precision::F64, Precision::F32] {
        // Without the entry points first, so that the user's own errors and signatures are
        // named in the contract's terms, not as a call from the harness that does not fit.
        let build = Build::new(file, source, &bare, precision);
        let module = build.parse()?;
        check_signatures(file, &module, &decl, precision)?;
        let info = build.validate(&module)?;
        if precision == Precision::F64 {
            build.refuse_f64_transcendentals(&module, &info)?;
        }
        let build = Build::new(file, source, &full, precision);
        build.validate(&build.parse()?)?;
    }
    // 'static: Shader and Entry are the kernel cache's keys, built in at compile time for
    // wgrad's own shaders.
    let leak = |s: String| -> &'static str { Box::leak(s.into_boxed_str()) };
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let number = NEXT.fetch_add(1, Ordering::Relaxed);
    let shader = Shader {
        name: leak(format!("wgsl:{file}#{number}")),
        source: leak(full),
    };
    let forward = Entry::new(shader, "wgrad_forward");
    let c = Arc::new(Contract {
        file: file.to_string(),
        source: source.to_string(),
        forward,
        forward_perturbed: forward.with(&[("WGRAD_PERTURBED", 1.0)]),
        backward_input: Entry::new(shader, "wgrad_backward"),
        backward_params: (decl.params.iter())
            .map(|p| Entry::new(shader, leak(format!("wgrad_backward_{}", p.name))))
            .collect(),
        decl,
        shader,
    });
    let mut built = built.lock().expect("contract cache poisoned");
    Ok(built.entry(key).or_insert(c).clone())
}

/// What breaks the contract, and where in the file when at one line.
#[derive(Debug)]
pub struct Problem {
    pub line: Option<usize>,
    pub message: String,
}

impl Problem {
    fn at(line: usize, message: String) -> Problem {
        Problem {
            line: Some(line),
            message,
        }
    }

    fn whole_file(message: String) -> Problem {
        Problem {
            line: None,
            message,
        }
    }

    /// "FILE:LINE: message", or "FILE: message".
    fn in_file(&self, file: &str) -> String {
        match self.line {
            Some(line) => format!("{file}:{line}: {}", self.message),
            None => format!("{file}: {}", self.message),
        }
    }
}

/// The `//!` lines, or what is wrong with them and the fix.
pub fn parse_declarations(source: &str) -> Result<Declarations, Problem> {
    let mut output = None;
    let mut input = None;
    let mut params: Vec<ParamDecl> = Vec::new();
    for (number, line) in source.lines().enumerate() {
        let Some(text) = line.trim_start().strip_prefix("//!") else {
            continue;
        };
        let at = |why: String| Problem::at(number + 1, why);
        let text = text.trim();
        if let Some(rest) = text.strip_prefix("output:") {
            output = Some(parse_output(rest.trim()).map_err(at)?);
        } else if let Some(rest) = text.strip_prefix("input:") {
            input = Some(positive(rest.trim()).map_err(at)?);
        } else if let Some(rest) = text.strip_prefix("param ") {
            let p = parse_param(rest).map_err(at)?;
            if params.iter().any(|q| q.name == p.name) {
                return Err(at(format!(
                    "parameter '{}' is declared twice: give each its own name",
                    p.name
                )));
            }
            params.push(p);
        } else {
            return Err(at(format!(
                "'//! {text}' is not a declaration: wgrad reads `//! output: same|K`, `//! input: D` \
                 and `//! param NAME: [dims] = init` (write other comments with // alone)"
            )));
        }
    }
    if params.len() > MAX_TENSORS {
        return Err(Problem::whole_file(format!(
            "{} parameter tensors declared, more than the {MAX_TENSORS} a layer may have: merge some",
            params.len()
        )));
    }
    let output = output.ok_or_else(|| {
        Problem::whole_file(
            "no `//! output:` declaration: add `//! output: same` (the input's shape) or \
             `//! output: K` (K features per sample)"
                .into(),
        )
    })?;
    Ok(Declarations {
        output,
        input,
        params,
    })
}

fn parse_output(text: &str) -> Result<OutputShape, String> {
    match text {
        "same" => Ok(OutputShape::Same),
        k => positive(k)
            .map(OutputShape::Features)
            .map_err(|_| format!("output '{k}' is neither `same` nor a number of features")),
    }
}

fn positive(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(v) if (1..=crate::gpu::limits::MAX_WIDTH).contains(&v) => Ok(v),
        _ => Err(format!(
            "'{text}' is not a whole number from 1 to {}",
            crate::gpu::limits::MAX_WIDTH
        )),
    }
}

/// `NAME: [dims] = init`
fn parse_param(text: &str) -> Result<ParamDecl, String> {
    const FORM: &str = "write `//! param NAME: [dims] = init`, e.g. `//! param alpha: [in] = 0.25`";
    let (name, rest) = text
        .split_once(':')
        .ok_or(format!("no ':' after the name: {FORM}"))?;
    let name = name.trim();
    let identifier = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !identifier {
        return Err(format!(
            "parameter name '{name}' is not a WGSL identifier of letters, digits and _ (starting with a letter)"
        ));
    }
    if PROVIDED.contains(&name) || name.starts_with("wgrad") {
        return Err(format!(
            "parameter name '{name}' is taken by wgrad's harness ({} and names starting with wgrad): rename it",
            PROVIDED.join(", ")
        ));
    }
    let (dims, init) = rest.split_once('=').ok_or(format!("no '= init': {FORM}"))?;
    let dims = dims.trim();
    let inner = (dims.strip_prefix('[').and_then(|d| d.strip_suffix(']')))
        .ok_or(format!("the shape '{dims}' is not in brackets: {FORM}"))?;
    let dims = inner
        .split(',')
        .map(|d| match d.trim() {
            "in" => Ok(Dim::In),
            "out" => Ok(Dim::Out),
            n => positive(n)
                .map(Dim::Fixed)
                .map_err(|_| format!("dimension '{n}' is not `in`, `out` or a whole number")),
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ParamDecl {
        name: name.to_string(),
        dims,
        init: parse_init(init.trim())?,
    })
}

fn parse_init(text: &str) -> Result<ParamInit, String> {
    let bad = || {
        format!(
            "init '{text}' is not a number, `he`, `xavier` or `normal(STD)` (e.g. normal(0.01))"
        )
    };
    match text {
        "he" => Ok(ParamInit::He),
        "xavier" => Ok(ParamInit::Xavier),
        _ => match text
            .strip_prefix("normal(")
            .and_then(|t| t.strip_suffix(')'))
        {
            Some(std) => match std.trim().parse::<f64>() {
                Ok(s) if s.is_finite() && s > 0.0 => Ok(ParamInit::Normal(s)),
                _ => Err(bad()),
            },
            None => match text.parse::<f64>() {
                Ok(v) if v.is_finite() => Ok(ParamInit::Constant(v)),
                _ => Err(bad()),
            },
        },
    }
}

/// The user's text without comments, line by line (so positions keep their line numbers).
fn code_lines(source: &str) -> impl Iterator<Item = (usize, &str)> {
    source
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.split("//").next().unwrap_or("")))
}

/// What naga cannot say in the user's terms: bindings and entry points of their own, a
/// function wgrad requires that is missing, a name the harness already defines.
fn check_user_text(source: &str, decl: &Declarations) -> Result<(), Problem> {
    for (line, code) in code_lines(source) {
        if let Some(what) = [
            "@group",
            "@binding",
            "var<storage",
            "var<uniform",
            "@compute",
        ]
        .iter()
        .find(|w| code.contains(**w))
        {
            return Err(Problem::at(
                line,
                format!(
                    "`{what}`: a binding or entry point that does not follow the contract. \
                 wgrad binds every buffer and owns the entry points: remove it, and read the \
                 input through x(n, i), the output through y(n, j), the output gradient through \
                 dy(n, j) and each parameter through its name, NAME(k)"
                ),
            ));
        }
        let params = decl.params.iter().map(|p| p.name.as_str());
        for name in PROVIDED.iter().copied().chain(params) {
            if defines(code, name) {
                return Err(Problem::at(line, format!(
                    "`fn {name}` redefines a function wgrad provides (x, y, dy, batch, \
                     in_size, out_size, tanh_r, exp_r, log_r, and one per declared parameter): rename it"
                )));
            }
        }
    }
    let required = ["forward", "backward"]
        .into_iter()
        .map(String::from)
        .chain(decl.params.iter().map(|p| format!("backward_{}", p.name)));
    for name in required {
        if !code_lines(source).any(|(_, code)| defines(code, &name)) {
            let signature = signature_of(&name);
            return Err(Problem::whole_file(format!(
                "no `fn {name}`: the contract needs `{signature}`{}",
                if name.starts_with("backward_") {
                    " for the declared parameter (the gradient of each element k, summed over the batch)"
                } else {
                    ""
                }
            )));
        }
    }
    Ok(())
}

/// Whether `code` declares `fn name(`.
fn defines(code: &str, name: &str) -> bool {
    let mut rest = code;
    while let Some(at) = rest.find("fn ") {
        let after = rest[at + 3..].trim_start();
        let ident: String = (after.chars())
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if ident == name && (at == 0 || !is_ident_char(rest[..at].chars().last())) {
            return true;
        }
        rest = &rest[at + 3..];
    }
    false
}

fn is_ident_char(c: Option<char>) -> bool {
    c.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn signature_of(name: &str) -> String {
    match name {
        "forward" => "fn forward(n: u32, j: u32) -> real".into(),
        "backward" => "fn backward(n: u32, i: u32) -> real".into(),
        param => format!("fn {param}(k: u32) -> real"),
    }
}

/// The user's text, then the harness, then per declared tensor its reader and (`entries`) the
/// entry point of its gradient. Without entries nothing calls the user's functions, so a
/// wrong signature is left for [`check_signatures`] to name. The user's text comes first so
/// that naga's line numbers are the file's.
fn assemble(source: &str, decl: &Declarations, entries: bool) -> String {
    let (accessors, entry_points) = HARNESS
        .split_once("// ENTRY POINTS\n")
        .expect("custom_layer.wgsl marks its entry points");
    let mut text = format!("{source}\n\n{accessors}");
    for (t, p) in decl.params.iter().enumerate() {
        let name = &p.name;
        text.push_str(&format!(
            "\n// Declared tensor {t}: {name}.\n\
             fn {name}(k: u32) -> real {{\n    return wgrad_param({t}u, k);\n}}\n"
        ));
    }
    if !entries {
        return text;
    }
    text.push_str(entry_points);
    for (t, p) in decl.params.iter().enumerate() {
        let name = &p.name;
        text.push_str(&format!(
            "\n@compute @workgroup_size(64)\n\
             fn wgrad_backward_{name}(@builtin(global_invocation_id) gid: vec3<u32>) {{\n    \
                 let k = wgrad_index(gid);\n    \
                 if (k >= wgrad_shape.count) {{\n        return;\n    }}\n    \
                 wgrad_copy = 0u;\n    \
                 wgrad_grads[wgrad_shape.offsets[{t}u / 4u][{t}u % 4u] + k] = backward_{name}(k);\n\
             }}\n"
        ));
    }
    text
}

/// One build of a layer file's module (the user's text first, then the harness) for one
/// precision, as naga sees it; errors are placed in the user's file when they lie there.
struct Build<'a> {
    file: &'a str,
    precision: Precision,
    /// As kernel::source_for builds it: the precision prelude, a newline, the text (which has
    /// no includes to expand: the user's would not parse here).
    full: String,
    /// Where the user's text starts in `full`, and its lines.
    offset: usize,
    user_lines: usize,
}

impl<'a> Build<'a> {
    fn new(file: &'a str, user: &str, text: &str, precision: Precision) -> Build<'a> {
        Build {
            file,
            precision,
            full: format!("{}\n{text}", prelude(precision)),
            offset: prelude(precision).len() + 1,
            user_lines: user.lines().count(),
        }
    }

    /// (line, column) in the user's file of a place in the module, if it lies there.
    fn place(&self, loc: Option<naga::SourceLocation>) -> Option<(usize, usize)> {
        let at = loc?.offset as usize;
        if at < self.offset {
            return None;
        }
        let line = self.full[self.offset..at].matches('\n').count() + 1;
        let col = (self.full[..at].rsplit('\n').next()).map_or(1, |s| s.chars().count() + 1);
        (line <= self.user_lines).then_some((line, col))
    }

    fn report(&self, message: String, loc: Option<naga::SourceLocation>) -> String {
        let (file, precision) = (self.file, self.precision);
        match self.place(loc) {
            Some((line, col)) => {
                format!("{file}:{line}:{col}: {message} ({precision} build): fix the WGSL there")
            }
            None => format!(
                "{file}: {message}, in the code wgrad puts around the file (its declarations \
                 and signatures must match the contract: `fn forward(n: u32, j: u32) -> real`, \
                 `fn backward(n: u32, i: u32) -> real`, `fn backward_NAME(k: u32) -> real` per \
                 declared parameter, values of type `real`) ({precision} build)"
            ),
        }
    }

    fn parse(&self) -> Result<naga::Module, String> {
        naga::front::wgsl::parse_str(&self.full).map_err(|e| {
            let mut message = e.message().to_string();
            if message.contains("no definition in scope") && self.full.contains("\n// param ") {
                message.push_str(
                    " (a parameter is declared on a `//!` line: `//! param`, not `// param`)",
                );
            }
            self.report(message, e.location(&self.full))
        })
    }

    fn validate(&self, module: &naga::Module) -> Result<naga::valid::ModuleInfo, String> {
        let capabilities = match self.precision {
            Precision::F64 => naga::valid::Capabilities::FLOAT64,
            Precision::F32 => naga::valid::Capabilities::empty(),
        };
        naga::valid::Validator::new(naga::valid::ValidationFlags::all(), capabilities)
            .validate(module)
            .map_err(|e| {
                let loc = e.spans().last().map(|(span, _)| span.location(&self.full));
                // naga's outer message and first span name the function; its causes and last
                // span say what is wrong in it, and where.
                let mut message = e.as_inner().to_string();
                let mut cause = std::error::Error::source(e.as_inner());
                while let Some(c) = cause {
                    message.push_str(&format!(": {c}"));
                    cause = c.source();
                }
                self.report(message, loc)
            })
    }

    /// Vulkan's GLSL.std.450 defines the transcendental functions for 16- and 32-bit floats
    /// only: on f64 values lavapipe computes garbage, consistently in forward and backward, so
    /// a gradient check cannot see it. They are refused on `real` in the f64 build.
    fn refuse_f64_transcendentals(
        &self,
        module: &naga::Module,
        info: &naga::valid::ModuleInfo,
    ) -> Result<(), String> {
        use naga::MathFunction as M;
        for (handle, function) in module.functions.iter() {
            let types = &info[handle];
            for (expr, e) in function.expressions.iter() {
                let naga::Expression::Math { fun, arg, .. } = *e else {
                    continue;
                };
                let on_f64 = matches!(
                    types[arg].ty.inner_with(&module.types).scalar(),
                    Some(naga::Scalar {
                        kind: naga::ScalarKind::Float,
                        width: 8
                    })
                );
                let transcendental = matches!(
                    fun,
                    M::Exp
                        | M::Exp2
                        | M::Log
                        | M::Log2
                        | M::Pow
                        | M::Sin
                        | M::Cos
                        | M::Tan
                        | M::Asin
                        | M::Acos
                        | M::Atan
                        | M::Atan2
                        | M::Sinh
                        | M::Cosh
                        | M::Tanh
                        | M::Asinh
                        | M::Acosh
                        | M::Atanh
                );
                if on_f64 && transcendental {
                    let loc = function.expressions.get_span(expr).location(&self.full);
                    let file = self.file;
                    let at = (self.place(Some(loc)))
                        .map_or(String::new(), |(line, col)| format!(":{line}:{col}"));
                    return Err(format!(
                        "{file}{at}: `{}` of a `real`: Vulkan has no f64 {0} (lavapipe computes \
                         garbage, the same in forward and backward, so no gradient check would \
                         see it): use exp_r, log_r or tanh_r, or write it through them",
                        format!("{fun:?}").to_lowercase()
                    ));
                }
            }
        }
        Ok(())
    }
}

/// forward, backward and backward_NAME take u32 indices and return one `real` (f32 or f64 as
/// `precision` builds it: a fixed f32 or f64 builds in one precision only).
fn check_signatures(
    file: &str,
    module: &naga::Module,
    decl: &Declarations,
    precision: Precision,
) -> Result<(), String> {
    let names = ["forward", "backward"]
        .into_iter()
        .map(|n| (n.to_string(), 2))
        .chain(
            decl.params
                .iter()
                .map(|p| (format!("backward_{}", p.name), 1)),
        );
    for (name, arity) in names {
        let Some((_, f)) = module
            .functions
            .iter()
            .find(|(_, f)| f.name.as_deref() == Some(&name))
        else {
            // check_user_text's scan saw it, but in a block comment.
            return Err(format!(
                "{file}: no `fn {name}`: the contract needs `{}`",
                signature_of(&name)
            ));
        };
        let is_u32 = |ty| {
            matches!(
                module.types[ty].inner,
                naga::TypeInner::Scalar(naga::Scalar::U32)
            )
        };
        let real = naga::Scalar {
            kind: naga::ScalarKind::Float,
            width: precision.bytes() as u8,
        };
        let returns_real = (f.result.as_ref())
            .is_some_and(|r| module.types[r.ty].inner == naga::TypeInner::Scalar(real));
        if f.arguments.len() != arity || !f.arguments.iter().all(|a| is_u32(a.ty)) || !returns_real
        {
            return Err(format!(
                "{file}: `fn {name}` does not have the contract's signature: write `{}` (indices \
                 u32, the value `real`, which is f32 or f64 as the net's precision builds it)",
                signature_of(&name)
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declarations_parse_with_their_shapes_and_starts() {
        let decl = parse_declarations(
            "// y = x·W (a comment)\n//! output: 7\n//! input: 33\n\
             //! param W: [in, out] = he\n//! param s: [3, in] = normal(0.25)\n\
             //!param b: [out] = -0.5\n",
        )
        .unwrap();
        assert_eq!(decl.output, OutputShape::Features(7));
        assert_eq!(decl.input, Some(33));
        let params: Vec<_> = (decl.params.iter())
            .map(|p| (p.name.as_str(), p.dims.clone(), p.init))
            .collect();
        assert_eq!(
            params,
            [
                ("W", vec![Dim::In, Dim::Out], ParamInit::He),
                ("s", vec![Dim::Fixed(3), Dim::In], ParamInit::Normal(0.25)),
                ("b", vec![Dim::Out], ParamInit::Constant(-0.5)),
            ]
        );
        assert_eq!(
            parse_declarations("//! output: same").unwrap().output,
            OutputShape::Same
        );
    }

    #[test]
    fn bad_declarations_name_their_line_and_fix() {
        let problem = |text: &str| parse_declarations(text).unwrap_err();
        let p = problem("//! output: same\n//! param a: [in] = 1\n//! param a: [out] = 0\n");
        assert_eq!(p.line, Some(3));
        assert!(p.message.contains("declared twice"), "{}", p.message);
        for (text, says) in [
            ("//! output: sometimes", "neither `same` nor a number"),
            (
                "//! output: same\n//! param x: [in] = 1",
                "taken by wgrad's harness",
            ),
            (
                "//! output: same\n//! param 2a: [in] = 1",
                "not a WGSL identifier",
            ),
            ("//! output: same\n//! param a: in = 1", "not in brackets"),
            (
                "//! output: same\n//! param a: [in, 0] = 1",
                "dimension '0'",
            ),
            (
                "//! output: same\n//! param a: [in] = normal(-1)",
                "normal(STD)",
            ),
            ("//! output: same\n//! outptu: 3", "not a declaration"),
        ] {
            let p = problem(text);
            assert!(p.line.is_some(), "{text}");
            assert!(p.message.contains(says), "{text}: {}", p.message);
        }
        assert_eq!(problem("fn forward() {}").line, None);
        let many: String = (0..=MAX_TENSORS)
            .map(|t| format!("//! param p{t}: [in] = 0\n"))
            .collect();
        let p = problem(&format!("//! output: same\n{many}"));
        assert!(p.message.contains("more than the 16"), "{}", p.message);
    }

    #[test]
    fn function_definitions_are_found_by_whole_name() {
        assert!(defines("fn forward(n: u32, j: u32) -> real {", "forward"));
        assert!(defines("  fn  backward_W(k: u32) -> real", "backward_W"));
        assert!(!defines("fn forward_helper(v: real) -> real", "forward"));
        assert!(!defines("fn backward_Wx(k: u32) -> real", "backward_W"));
        assert!(!defines("let defn forward = 1;", "forward"));
        assert!(defines("let a = 1; fn y(n: u32) -> real", "y"));
    }
}
