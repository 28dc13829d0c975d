//! Pictures of a run: loss and accuracy curves from the trainer's metrics files
//! ([`plot_runs`]), and the spread of a gradient check's element-wise errors
//! ([`plot_gradcheck`]).
//!
//! Text is drawn with a font compiled into the binary (DejaVu Sans, subset; see
//! `DejaVuSans-LICENSE.txt` beside it), not one looked up on the system: a headless CI machine
//! often has no fonts at all, and the pictures should not depend on which it has. Pictures are
//! drawn in memory and written atomically, so a failed run leaves no half picture behind.

mod curves;
mod histogram;
mod metrics;

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::error::{Error, Result};

pub use curves::{plot_runs, run_names, Run, XAxis};
pub use histogram::plot_gradcheck;
pub use metrics::{read_metrics, MetricsRecord, RecordKind, COLUMNS};

/// DejaVu Sans, cut by fonttools' pyftsubset to Latin-1, Greek, punctuation, super- and
/// subscripts and a few maths signs (40 KB instead of 760 KB). Licence: the Bitstream Vera and
/// Arev font licences (permissive; the modified font may not be called Bitstream, Vera or Arev),
/// DejaVu's changes public domain; the full text is in DejaVuSans-LICENSE.txt. Made with:
/// `pyftsubset DejaVuSans.ttf --unicodes=U+0020-007E,U+00A0-00FF,U+0391-03A9,U+03B1-03C9,
/// U+2010-2027,U+2030-203A,U+2070-209F,U+2190-2193,U+2212,U+2016,U+221A,U+221E,U+2248,U+2260,
/// U+2264,U+2265 --no-hinting --legacy-kern --layout-features=kern --drop-tables+=FFTM`.
static FONT: &[u8] = include_bytes!("DejaVuSans-subset.ttf");

/// The family every text style names; plotters looks it up in its own table (ab_glyph), not
/// the system's.
const FAMILY: &str = "sans-serif";

fn register_font() -> Result<()> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED
        .get_or_init(|| plotters::style::register_font(FAMILY, FontStyle::Normal, FONT).is_ok());
    if ok {
        Ok(())
    } else {
        Err(Error::Plot("the bundled font does not parse".into()))
    }
}

fn font(size: f64) -> TextStyle<'static> {
    (FAMILY, size).into_font().color(&BLACK)
}

/// What a picture is written as, from the output's extension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Svg,
    Png,
}

impl Format {
    /// The format `path` asks for, or an error naming the extension and both choices.
    pub fn of(path: &Path) -> Result<Format> {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        match ext.as_deref() {
            Some("svg") => Ok(Format::Svg),
            Some("png") => Ok(Format::Png),
            other => Err(Error::InvalidArgument(format!(
                "{}: cannot tell the picture format from {}: name the output .svg or .png",
                path.display(),
                match other {
                    Some(e) => format!("the extension '.{e}'"),
                    None => "a name without an extension".into(),
                }
            ))),
        }
    }
}

/// Checks what can be checked of an output path before any work is done: its format, and that
/// its folder exists. Returns the format.
pub fn check_output(path: &Path) -> Result<Format> {
    if path.is_dir() {
        return Err(Error::InvalidArgument(format!(
            "{} is a folder: give a file path such as {}",
            path.display(),
            path.join("curves.svg").display()
        )));
    }
    let format = Format::of(path)?;
    let dir = folder_of(path);
    if !dir.is_dir() {
        return Err(Error::InvalidArgument(format!(
            "{}: folder {} does not exist; create it first (mkdir -p {}) or choose another path",
            path.display(),
            dir.display(),
            dir.display()
        )));
    }
    Ok(format)
}

fn folder_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// A picture drawn onto any plotters backend, so that one drawing serves SVG and PNG.
trait Figure {
    /// Width and height in pixels.
    fn size(&self) -> (u32, u32);
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Drawn
    where
        DB::ErrorType: 'static;
}

type Drawn = std::result::Result<(), Box<dyn std::error::Error>>;

/// Draws `figure` and writes it to `path` atomically, in the format its extension names.
fn save(figure: &impl Figure, path: &Path) -> Result<()> {
    let format = check_output(path)?;
    register_font()?;
    let (w, h) = figure.size();
    let failed =
        |e: Box<dyn std::error::Error>| Error::Plot(format!("drawing {}: {e}", path.display()));
    let bytes = match format {
        Format::Svg => {
            let mut svg = String::new();
            {
                let root = SVGBackend::with_string(&mut svg, (w, h)).into_drawing_area();
                figure.draw(&root).map_err(failed)?;
                root.present().map_err(|e| failed(e.into()))?;
            }
            svg.into_bytes()
        }
        Format::Png => {
            let mut rgb = vec![0u8; w as usize * h as usize * 3];
            {
                let root = BitMapBackend::with_buffer(&mut rgb, (w, h)).into_drawing_area();
                figure.draw(&root).map_err(failed)?;
                root.present().map_err(|e| failed(e.into()))?;
            }
            encode_png(&rgb, w, h).map_err(|e| failed(e.into()))?
        }
    };
    write_atomically(path, &bytes)
}

fn encode_png(rgb: &[u8], w: u32, h: u32) -> std::result::Result<Vec<u8>, png::EncodingError> {
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, w, h);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    // Flat colours and straight lines: adaptive filtering and the best deflate level (both of
    // which High sets) shrink these pictures several times over, for a few milliseconds.
    encoder.set_compression(png::Compression::High);
    encoder.write_header()?.write_image_data(rgb)?;
    Ok(out)
}

/// A temporary file beside the target, then a rename: a reader (or a browser refreshing the
/// picture) sees the old picture or the new one, never half of one, and a failure leaves none.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let name = path.file_name().ok_or_else(|| {
        Error::InvalidArgument(format!(
            "{} is not a file path: give one such as curves.svg",
            path.display()
        ))
    })?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    let tmp = folder_of(path).join(tmp_name);
    let written = (|| -> std::io::Result<()> {
        let mut file = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()
    })()
    .and_then(|_| fs::rename(&tmp, path));
    written.map_err(|e| {
        let _ = fs::remove_file(&tmp);
        Error::io(
            format!(
                "writing {} (check the folder's permissions and free space)",
                path.display()
            ),
            e,
        )
    })
}

/// Ten colours that stay apart on white and for most colour-blind readers (matplotlib's
/// tab10), so a run or a series keeps its colour from picture to picture.
const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// 39200 as "39,200": element counts are read at a glance.
fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// 10^e as "10⁻⁵" (superscripts read as powers where "1e-05" reads as code).
fn power_of_ten(e: i32) -> String {
    if e == 0 {
        return "1".into();
    }
    let sup = |c: char| match c {
        '-' => '⁻',
        '0' => '⁰',
        '1' => '¹',
        '2' => '²',
        '3' => '³',
        '4' => '⁴',
        '5' => '⁵',
        '6' => '⁶',
        '7' => '⁷',
        '8' => '⁸',
        _ => '⁹',
    };
    format!("10{}", e.to_string().chars().map(sup).collect::<String>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_come_from_the_extension() {
        assert_eq!(Format::of(Path::new("a/b.SVG")).unwrap(), Format::Svg);
        assert_eq!(Format::of(Path::new("b.png")).unwrap(), Format::Png);
        let e = Format::of(Path::new("b.pdf")).unwrap_err().to_string();
        assert!(
            e.contains(".pdf") && e.contains(".svg") && e.contains(".png"),
            "{e}"
        );
    }

    #[test]
    fn numbers_read_as_written() {
        assert_eq!(thousands(39_200), "39,200");
        assert_eq!(thousands(7), "7");
        assert_eq!(thousands(1_000_000), "1,000,000");
        assert_eq!(power_of_ten(-16), "10⁻¹⁶");
        assert_eq!(power_of_ten(0), "1");
        assert_eq!(power_of_ten(3), "10³");
    }
}
