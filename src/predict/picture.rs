//! A picture made into a net's input as MNIST's digits were made (LeCun, Cortes and Burges): a
//! greyscale digit, white on black, whose bounding box is fitted, aspect ratio kept and
//! anti-aliased, into a 20×20 box, and which is then placed in the 28×28 field so that its centre
//! of mass lies at the field's centre. An H×W net gets the same with a box of 20/28 of each side.
//!
//! The steps are pure functions: [`decode_png`] (any colour type and bit depth to luminance),
//! [`ink`] (polarity and background), [`fit_and_centre`] (box and centre of mass); [`prepare`]
//! runs the last two. A digit that is already MNIST-made comes back unchanged: its box is 20
//! pixels on its long side, so the fit is the identity, and MNIST's centres of mass all lie
//! within half a pixel of (14, 14) in pixel indices, so the placement is too.

use image::imageops::{self, FilterType};
use image::{ImageBuffer, ImageFormat, Luma};

/// Full scale: pixels run from 0 to this.
const FULL: f32 = 255.0;

/// MNIST's box for the digit in its 28-pixel field.
const BOX: f64 = 20.0;
const FIELD: f64 = 28.0;

/// A greyscale picture, `width × height` values row-major: luminance from 0 (black) to 255
/// (white), or, after [`ink`], from 0 (background) to 255 (full ink).
#[derive(Clone, Debug, PartialEq)]
pub struct Grey {
    pub width: usize,
    pub height: usize,
    pub values: Vec<f32>,
}

impl Grey {
    /// 8-bit pixels as they are (an IDX image, or a test's picture).
    pub fn from_u8(width: usize, height: usize, pixels: &[u8]) -> Grey {
        assert_eq!(pixels.len(), width * height, "{width}×{height} pixels");
        Grey {
            width,
            height,
            values: pixels.iter().map(|&p| f32::from(p)).collect(),
        }
    }

    /// The outermost rows and columns, each pixel once.
    fn border(&self) -> Vec<f32> {
        let (w, h) = (self.width, self.height);
        (0..h)
            .flat_map(|r| (0..w).map(move |c| (r, c)))
            .filter(|&(r, c)| r == 0 || c == 0 || r + 1 == h || c + 1 == w)
            .map(|(r, c)| self.values[r * w + c])
            .collect()
    }
}

/// A picture made into a net's input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Prepared {
    /// `rows × cols` pixels, row-major, 0 (background) to 255, as MNIST's.
    pub pixels: Vec<u8>,
    /// No ink was found: the picture is all background, and `pixels` are all 0.
    pub blank: bool,
}

/// Decodes a PNG of any colour type (greyscale, with alpha, RGB, RGBA, palette) and bit depth
/// into luminance, ITU-R BT.601's weights on the stored values (as PIL's "L" conversion).
///
/// Transparency is composited over a matte that the painted pixels stand out from: white when
/// they are dark on average (weighted by their opacity), black when they are light. A digit
/// drawn on a transparent canvas, a common export, so comes out as ink on paper whichever its
/// colour; a fully opaque picture is unaffected.
pub fn decode_png(bytes: &[u8]) -> Result<Grey, image::ImageError> {
    let rgba = image::load_from_memory_with_format(bytes, ImageFormat::Png)?.to_rgba32f();
    let (width, height) = (rgba.width() as usize, rgba.height() as usize);
    let luma_alpha: Vec<(f64, f64)> = rgba
        .pixels()
        .map(|p| {
            let [r, g, b, a] = p.0.map(f64::from);
            (0.299 * r + 0.587 * g + 0.114 * b, a)
        })
        .collect();
    let matte = matte(&luma_alpha);
    let values = luma_alpha
        .iter()
        .map(|&(l, a)| ((a * l + (1.0 - a) * matte).clamp(0.0, 1.0) * f64::from(FULL)) as f32)
        .collect();
    Ok(Grey {
        width,
        height,
        values,
    })
}

/// The luminance (0 to 1) that transparency is composited over: the opposite of the painted
/// pixels' mean luminance (black when nothing is painted).
fn matte(luma_alpha: &[(f64, f64)]) -> f64 {
    let (painted, weight) = luma_alpha
        .iter()
        .fold((0.0, 0.0), |(s, w), &(l, a)| (s + a * l, w + a));
    if weight > 0.0 && painted / weight < 0.5 {
        1.0
    } else {
        0.0
    }
}

/// Ink on a clean background, MNIST's polarity: 0 background, 255 full ink.
///
/// With `invert`, a light picture (the median of its outermost pixels above mid-grey) is turned
/// to white on black. The background's level (that median, once dark) is then taken as 0 and the
/// rest stretched to keep 255 at 255, so that grey paper leaves no veil over the field. A
/// background still light (only with `invert` off) is left as it is.
pub fn ink(picture: &Grey, invert: bool) -> Grey {
    let mid = FULL / 2.0;
    let light = median(picture.border()) > mid;
    let values: Vec<f32> = if invert && light {
        picture.values.iter().map(|v| FULL - v).collect()
    } else {
        picture.values.clone()
    };
    let turned = Grey {
        values,
        ..picture.clone()
    };
    let background = median(turned.border());
    if background <= 0.0 || background > mid {
        return turned;
    }
    let gain = FULL / (FULL - background);
    let values = (turned.values.iter())
        .map(|v| ((v - background) * gain).max(0.0))
        .collect();
    Grey { values, ..turned }
}

/// The median of `values` (the mean of the middle two for an even count; 0 for none).
fn median(mut values: Vec<f32>) -> f32 {
    values.sort_by(f32::total_cmp);
    match values.len() {
        0 => 0.0,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// [`ink`] then [`fit_and_centre`]: `picture` as a `rows × cols` net input.
pub fn prepare(picture: &Grey, rows: usize, cols: usize, invert: bool) -> Prepared {
    match fit_and_centre(&ink(picture, invert), rows, cols) {
        Some(pixels) => Prepared {
            pixels,
            blank: false,
        },
        None => Prepared {
            pixels: vec![0; rows * cols],
            blank: true,
        },
    }
}

/// The digit in `ink` as a `rows × cols` input: its bounding box (pixels that round to 1 or
/// more) resized, aspect ratio kept, to fill a box of 20/28 of each side (anti-aliased with a
/// triangle filter whose support widens with the reduction), then placed, clipped at the edges,
/// so that its centre of mass (in pixel indices) is at (rows/2, cols/2) to the nearest pixel.
/// None when there is no ink.
pub fn fit_and_centre(ink: &Grey, rows: usize, cols: usize) -> Option<Vec<u8>> {
    let (top, bottom, left, right) = bounding_box(ink)?;
    let (h, w) = (bottom - top, right - left);
    let crop: Vec<f32> = (top..bottom)
        .flat_map(|r| &ink.values[r * ink.width + left..r * ink.width + right])
        .map(|v| v / FULL)
        .collect();
    let (fit_h, fit_w) = fitted_size((h, w), (rows, cols));
    let crop = ImageBuffer::<Luma<f32>, Vec<f32>>::from_raw(w as u32, h as u32, crop)
        .expect("the crop holds h·w values");
    let resized = imageops::resize(&crop, fit_w as u32, fit_h as u32, FilterType::Triangle);
    let digit: Vec<u8> = resized
        .into_raw()
        .iter()
        .map(|v| (v * FULL).round().clamp(0.0, FULL) as u8)
        .collect();
    let (cy, cx) = centre_of_mass(&digit, fit_w)?;
    let at = |centre: usize, mass: f64| (centre as f64 / 2.0 - mass).round() as isize;
    Some(place(
        &digit,
        (fit_h, fit_w),
        (rows, cols),
        (at(rows, cy), at(cols, cx)),
    ))
}

/// The rows `top..bottom` and columns `left..right` that hold every pixel of ink (0.5 or more,
/// so that one that rounds to 0 in 8 bits is not ink); None without any.
fn bounding_box(ink: &Grey) -> Option<(usize, usize, usize, usize)> {
    let mut found: Option<(usize, usize, usize, usize)> = None;
    for (i, &v) in ink.values.iter().enumerate() {
        if v < 0.5 {
            continue;
        }
        let (r, c) = (i / ink.width, i % ink.width);
        found = Some(match found {
            None => (r, r + 1, c, c + 1),
            Some((t, b, l, rt)) => (t.min(r), b.max(r + 1), l.min(c), rt.max(c + 1)),
        });
    }
    found
}

/// The size an `h × w` digit takes in a `rows × cols` field: scaled, aspect ratio kept, to fill
/// the box of 20/28 of each side on its tighter axis; at least one pixel each way.
fn fitted_size((h, w): (usize, usize), (rows, cols): (usize, usize)) -> (usize, usize) {
    let side = |n: usize| (n as f64 * BOX / FIELD).round().max(1.0);
    let (box_h, box_w) = (side(rows), side(cols));
    let scale = (box_h / h as f64).min(box_w / w as f64);
    let fit = |n: usize, limit: f64| (n as f64 * scale).round().clamp(1.0, limit) as usize;
    (fit(h, box_h), fit(w, box_w))
}

/// The centre of mass (row, column) of `pixels`, `width` to a row, in pixel indices; None when
/// they hold no mass.
fn centre_of_mass(pixels: &[u8], width: usize) -> Option<(f64, f64)> {
    let (mut mass, mut rows, mut cols) = (0.0, 0.0, 0.0);
    for (i, &p) in pixels.iter().enumerate() {
        let p = f64::from(p);
        mass += p;
        rows += p * (i / width) as f64;
        cols += p * (i % width) as f64;
    }
    (mass > 0.0).then(|| (rows / mass, cols / mass))
}

/// `digit` (`h × w`) in a blank `rows × cols` field with its top left pixel at (`top`, `left`);
/// whatever falls outside is cut off.
fn place(
    digit: &[u8],
    (h, w): (usize, usize),
    (rows, cols): (usize, usize),
    (top, left): (isize, isize),
) -> Vec<u8> {
    let mut field = vec![0; rows * cols];
    for r in 0..h {
        for c in 0..w {
            let (fr, fc) = (top + r as isize, left + c as isize);
            if (0..rows as isize).contains(&fr) && (0..cols as isize).contains(&fc) {
                field[fr as usize * cols + fc as usize] = digit[r * w + c];
            }
        }
    }
    field
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `height × width` black picture with the rectangle rows `r`, columns `c` at `value`.
    fn rectangle(
        (height, width): (usize, usize),
        r: std::ops::Range<usize>,
        c: std::ops::Range<usize>,
        value: u8,
    ) -> Grey {
        let mut pixels = vec![0u8; height * width];
        for row in r {
            for col in c.clone() {
                pixels[row * width + col] = value;
            }
        }
        Grey::from_u8(width, height, &pixels)
    }

    fn invert(picture: &Grey) -> Grey {
        let values = picture.values.iter().map(|v| FULL - v).collect();
        Grey {
            values,
            ..picture.clone()
        }
    }

    /// (top, bottom, left, right) of the lit pixels of a `cols`-wide field.
    fn lit_box(pixels: &[u8], cols: usize) -> (usize, usize, usize, usize) {
        let grey = Grey::from_u8(cols, pixels.len() / cols, pixels);
        bounding_box(&grey).expect("some ink")
    }

    #[test]
    fn a_digit_already_made_as_mnist_comes_back_unchanged() {
        // 20 rows by 6 columns, its mass at (14, 14): rows 4..24, columns 11..17.
        let mut pixels = vec![0u8; 28 * 28];
        for r in 4..24 {
            for c in 11..17 {
                pixels[r * 28 + c] = (30 * (c - 10) + r) as u8;
            }
        }
        let (cy, cx) = centre_of_mass(&pixels, 28).unwrap();
        assert!(
            (cy - 14.0).abs() < 0.5 && (cx - 14.0).abs() < 0.5,
            "({cy}, {cx})"
        );
        let grey = Grey::from_u8(28, 28, &pixels);
        let made = prepare(&grey, 28, 28, true);
        assert_eq!(made.pixels, pixels);
        assert!(!made.blank);
        // Black on white: the same once inverted.
        assert_eq!(prepare(&invert(&grey), 28, 28, true).pixels, pixels);
    }

    #[test]
    fn a_large_light_picture_is_inverted_fitted_and_centred() {
        // A dark bar 300 rows by 100 columns across a white picture 100 wide and 784 high.
        let picture = invert(&rectangle((784, 100), 10..310, 0..100, 255));
        let made = prepare(&picture, 28, 28, true);
        // 3:1, so it fits the 20-row box as 20 rows by 7 columns (6.67 rounded).
        let (t, b, l, r) = lit_box(&made.pixels, 28);
        assert_eq!((b - t, r - l), (20, 7));
        let (cy, cx) = centre_of_mass(&made.pixels, 28).unwrap();
        assert!(
            (cy - 14.0).abs() <= 0.5 && (cx - 14.0).abs() <= 0.5,
            "({cy}, {cx})"
        );
    }

    #[test]
    fn without_inversion_a_light_picture_stays_as_it_is() {
        let picture = invert(&rectangle((28, 28), 4..24, 10..16, 255));
        assert_eq!(ink(&picture, false), picture);
        assert_eq!(ink(&picture, true), rectangle((28, 28), 4..24, 10..16, 255));
    }

    #[test]
    fn a_grey_background_is_taken_as_zero_and_the_ink_kept_at_full() {
        // Light grey paper (200) with black ink (0): inverted, 55 and 255.
        let mut picture = rectangle((10, 10), 3..7, 3..7, 255);
        for v in &mut picture.values {
            *v = if *v == FULL { 0.0 } else { 200.0 };
        }
        let ink = ink(&picture, true);
        assert_eq!(ink, rectangle((10, 10), 3..7, 3..7, 255));
    }

    #[test]
    fn a_one_pixel_picture_is_blank_and_not_a_panic() {
        for value in [0, 128, 255] {
            let made = prepare(&Grey::from_u8(1, 1, &[value]), 28, 28, true);
            assert!(made.blank, "{value}");
            assert_eq!(made.pixels, vec![0; 28 * 28]);
        }
        // Without inversion, a white pixel is all ink and fills the box; its centre of mass,
        // 9.5, is half a pixel from 14 either way, and the shift rounds away from zero.
        let made = prepare(&Grey::from_u8(1, 1, &[255]), 28, 28, false);
        assert!(!made.blank);
        assert_eq!(lit_box(&made.pixels, 28), (5, 25, 5, 25));
    }

    #[test]
    fn a_blank_picture_gives_a_blank_input() {
        for value in [0, 255] {
            let made = prepare(&Grey::from_u8(5, 3, &[value; 15]), 28, 28, true);
            assert!(made.blank);
            assert!(made.pixels.iter().all(|&p| p == 0));
        }
        assert_eq!(fit_and_centre(&Grey::from_u8(2, 2, &[0; 4]), 28, 28), None);
    }

    #[test]
    fn a_wide_7_by_33_picture_fits_its_width_to_the_box() {
        // A stroke across the whole of the middle row.
        let made = prepare(&rectangle((7, 33), 3..4, 0..33, 255), 28, 28, true);
        let (t, b, l, r) = lit_box(&made.pixels, 28);
        // One row stays one row (20/33 of a pixel, at least one), at full ink. Its centre of
        // mass, (0, 9.5), goes to (14, 14): the half-pixel shift rounds away from zero.
        assert_eq!((t, b, l, r), (14, 15, 5, 25));
        let row = &made.pixels[14 * 28..15 * 28];
        assert!(row[5..25].iter().all(|&p| p == 255));
    }

    #[test]
    fn other_fields_get_a_box_of_20_28ths_of_each_side() {
        assert_eq!(fitted_size((20, 5), (28, 28)), (20, 5));
        assert_eq!(fitted_size((300, 100), (28, 28)), (20, 7));
        assert_eq!(fitted_size((1, 1), (28, 28)), (20, 20));
        assert_eq!(fitted_size((1, 100), (28, 28)), (1, 20));
        assert_eq!(fitted_size((10, 10), (14, 56)), (10, 10));
        assert_eq!(fitted_size((10, 10), (56, 14)), (10, 10));
        assert_eq!(fitted_size((50, 10), (1, 1)), (1, 1));
        // A 12×12 net's box is 9×9 (8.57 rounded).
        let made = prepare(&rectangle((40, 40), 5..35, 10..20, 255), 12, 12, true);
        let (t, b, l, r) = lit_box(&made.pixels, 12);
        assert_eq!((b - t, r - l), (9, 3));
    }

    #[test]
    fn the_centre_of_mass_lands_at_the_centre_of_a_non_square_field() {
        // An L: the mass sits low and left of the box's middle.
        let mut picture = rectangle((60, 60), 10..50, 10..18, 255);
        for r in 42..50 {
            for c in 18..40 {
                picture.values[r * 60 + c] = FULL;
            }
        }
        for (rows, cols) in [(28, 28), (20, 36), (33, 17)] {
            let made = prepare(&picture, rows, cols, true);
            let (cy, cx) = centre_of_mass(&made.pixels, cols).unwrap();
            let (ry, rx) = (rows as f64 / 2.0, cols as f64 / 2.0);
            assert!((cy - ry).abs() <= 0.5, "{rows}×{cols}: row {cy} for {ry}");
            assert!(
                (cx - rx).abs() <= 0.5,
                "{rows}×{cols}: column {cx} for {rx}"
            );
        }
    }

    #[test]
    fn rows_and_columns_are_not_swapped() {
        // A tall bar stays tall, a wide one wide, in a field that is not square.
        let tall = prepare(&rectangle((40, 20), 5..35, 8..12, 255), 28, 40, true);
        let (t, b, l, r) = lit_box(&tall.pixels, 40);
        assert!(b - t > r - l, "tall: {}×{}", b - t, r - l);
        let wide = prepare(&rectangle((20, 40), 8..12, 5..35, 255), 28, 40, true);
        let (t, b, l, r) = lit_box(&wide.pixels, 40);
        assert!(b - t < r - l, "wide: {}×{}", b - t, r - l);
    }

    #[test]
    fn placement_cuts_off_what_falls_outside() {
        let digit = [1, 2, 3, 4];
        assert_eq!(place(&digit, (2, 2), (2, 3), (-1, 2)), [0, 0, 3, 0, 0, 0]);
        assert_eq!(place(&digit, (2, 2), (2, 2), (0, 0)), digit);
        assert_eq!(place(&digit, (2, 2), (2, 2), (5, 5)), [0; 4]);
    }

    #[test]
    fn the_matte_contrasts_with_the_painted_pixels() {
        assert_eq!(matte(&[(0.0, 1.0), (0.9, 0.0)]), 1.0);
        assert_eq!(matte(&[(1.0, 1.0), (0.1, 0.0)]), 0.0);
        assert_eq!(matte(&[(1.0, 0.0)]), 0.0);
        assert_eq!(matte(&[]), 0.0);
    }

    #[test]
    fn median_of_odd_even_and_no_values() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(vec![]), 0.0);
    }
}
