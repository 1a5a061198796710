//! The report page: one self-contained HTML file — inline CSS, charts as
//! inline SVG, a table of the numbers under each chart, no scripts and no
//! external resources.

use std::fmt::Write;

/// Numbers as a reader wants them: ≤ 4 significant digits, no exponent for
/// everyday magnitudes.
pub fn fmt_num(x: f64) -> String {
    if !x.is_finite() {
        return x.to_string();
    }
    let a = x.abs();
    if x == x.trunc() && a < 1e9 {
        format!("{x:.0}")
    } else if a >= 100.0 {
        format!("{x:.1}")
    } else if a >= 1.0 {
        format!("{x:.2}")
    } else if a >= 1e-3 {
        format!("{x:.4}")
    } else {
        format!("{x:.3e}")
    }
}

pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// A chart and the numbers behind it.
pub struct Figure {
    /// File stem of the SVG written beside the page.
    pub name: String,
    pub svg: String,
    pub caption: String,
    pub headers: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

pub struct Section {
    pub title: String,
    pub intro: String,
    pub figures: Vec<Figure>,
}

pub fn table(headers: &[String], rows: &[Vec<String>]) -> String {
    let mut t = String::from("<table><thead><tr>");
    for h in headers {
        let _ = write!(t, "<th>{}</th>", escape(h));
    }
    t.push_str("</tr></thead><tbody>");
    for r in rows {
        t.push_str("<tr>");
        for c in r {
            let _ = write!(t, "<td>{}</td>", escape(c));
        }
        t.push_str("</tr>");
    }
    t.push_str("</tbody></table>");
    t
}

const CSS: &str = "body{font-family:sans-serif;margin:24px auto;max-width:1100px;color:#222;line-height:1.4}\
h1{font-size:1.6em}h2{font-size:1.25em;border-bottom:1px solid #ccc;padding-bottom:4px;margin-top:2em}\
figure{margin:1em 0 2em 0}figcaption{font-size:.9em;color:#444;margin:.3em 0}\
table{border-collapse:collapse;font-size:.8em;margin:.4em 0}th,td{border:1px solid #ccc;padding:2px 6px;text-align:right}\
th{background:#f0f0f0}td:first-child,th:first-child{text-align:left}.note{color:#555;font-size:.9em}";

pub fn page(title: &str, intro: &[String], sections: &[Section]) -> String {
    let mut h = String::new();
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title><style>{CSS}</style></head><body>\n<h1>{}</h1>\n",
        escape(title),
        escape(title)
    );
    for p in intro {
        let _ = writeln!(h, "<p class=\"note\">{}</p>", escape(p));
    }
    for s in sections {
        let _ = writeln!(h, "<h2>{}</h2>", escape(&s.title));
        if !s.intro.is_empty() {
            let _ = writeln!(h, "<p class=\"note\">{}</p>", escape(&s.intro));
        }
        for f in &s.figures {
            // Inline: the XML declaration is not allowed inside HTML.
            let svg = f.svg.trim_start_matches(|c| c != '<');
            let svg = if svg.starts_with("<?xml") { svg.split_once("?>").map_or(svg, |x| x.1) } else { svg };
            let file = if svg.is_empty() { String::new() } else { format!(" ({}.svg)", f.name) };
            let _ = writeln!(
                h,
                "<figure id=\"{}\">{}<figcaption>{}{}</figcaption>{}</figure>",
                escape(&f.name),
                svg.trim(),
                escape(&f.caption),
                escape(&file),
                table(&f.headers, &f.rows)
            );
        }
    }
    h.push_str("</body></html>\n");
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_well_and_text_is_escaped() {
        assert_eq!(fmt_num(3.0), "3");
        assert_eq!(fmt_num(1234.567), "1234.6");
        assert_eq!(fmt_num(12.3456), "12.35");
        assert_eq!(fmt_num(0.012345), "0.0123");
        assert_eq!(escape("<a&b>"), "&lt;a&amp;b&gt;");
    }
}
