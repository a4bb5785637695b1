//! Results: one section per scenario with its command lines, rows of figures and
//! notes; printed as text tables and written as the same data in JSON.

use serde::Serialize;
use serde_json::Value;
use std::fmt::Write as _;

/// One figure or word in a row.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Cell {
    /// A measured number.
    Num(f64),
    /// A word (a name, "n/a").
    Text(String),
}

impl From<f64> for Cell {
    fn from(v: f64) -> Self {
        Cell::Num(v)
    }
}
impl From<u64> for Cell {
    fn from(v: u64) -> Self {
        Cell::Num(v as f64)
    }
}
impl From<&str> for Cell {
    fn from(v: &str) -> Self {
        Cell::Text(v.to_string())
    }
}
impl From<String> for Cell {
    fn from(v: String) -> Self {
        Cell::Text(v)
    }
}

/// One line of a table: a label and named cells, in order.
#[derive(Debug, Clone)]
pub struct Row {
    /// What was measured.
    pub label: String,
    /// Column name and value.
    pub cells: Vec<(String, Cell)>,
}

impl Row {
    /// A row without cells yet.
    pub fn new(label: impl Into<String>) -> Row {
        Row {
            label: label.into(),
            cells: Vec::new(),
        }
    }

    /// Adds a cell.
    pub fn set(mut self, column: &str, value: impl Into<Cell>) -> Row {
        self.cells.push((column.to_string(), value.into()));
        self
    }

    /// Adds a cell when there is a value.
    pub fn set_opt(self, column: &str, value: Option<impl Into<Cell>>) -> Row {
        match value {
            Some(v) => self.set(column, v),
            None => self,
        }
    }

    /// The number in a column.
    pub fn num(&self, column: &str) -> Option<f64> {
        self.cells.iter().find_map(|(c, v)| match v {
            Cell::Num(n) if c == column => Some(*n),
            _ => None,
        })
    }
}

impl Serialize for Row {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(self.cells.len() + 1))?;
        m.serialize_entry("label", &self.label)?;
        for (k, v) in &self.cells {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

/// The results of one scenario.
#[derive(Debug, Clone, Serialize)]
pub struct Section {
    /// Scenario name.
    pub name: String,
    /// What it measures.
    pub title: String,
    /// Command lines that reproduce its runs.
    pub commands: Vec<String>,
    /// Figures.
    pub rows: Vec<Row>,
    /// How to read them; goals met or missed.
    pub notes: Vec<String>,
    /// Parts that could not run, and why.
    pub skipped: Vec<String>,
    /// Wall time of the scenario, seconds.
    pub seconds: f64,
}

impl Section {
    /// An empty section.
    pub fn new(name: &str, title: &str) -> Section {
        Section {
            name: name.into(),
            title: title.into(),
            commands: Vec::new(),
            rows: Vec::new(),
            notes: Vec::new(),
            skipped: Vec::new(),
            seconds: 0.0,
        }
    }

    /// Records a command line and echoes it at once, so a long run shows progress.
    pub fn command(&mut self, line: impl Into<String>) {
        let line = line.into();
        println!("  $ {line}");
        self.commands.push(line);
    }

    /// Adds a row and echoes it.
    pub fn row(&mut self, row: Row) {
        println!("  {}", render_inline(&row));
        self.rows.push(row);
    }

    /// Adds a note and echoes it.
    pub fn note(&mut self, note: impl Into<String>) {
        let note = note.into();
        println!("  note: {note}");
        self.notes.push(note);
    }

    /// Records a part that could not run and echoes it.
    pub fn skip(&mut self, why: impl Into<String>) {
        let why = why.into();
        println!("  skipped: {why}");
        self.skipped.push(why);
    }

    /// The first row with this label.
    pub fn find(&self, label: &str) -> Option<&Row> {
        self.rows.iter().find(|r| r.label == label)
    }
}

/// Everything one run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Facts about the run: date, machine, versions, broker configuration.
    pub meta: Value,
    /// One per scenario run.
    pub sections: Vec<Section>,
}

/// A number as a table shows it.
pub fn fmt_num(v: f64) -> String {
    let a = v.abs();
    if a >= 100.0 || v == v.trunc() {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 0.1 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

fn fmt_cell(c: &Cell) -> String {
    match c {
        Cell::Num(v) => fmt_num(*v),
        Cell::Text(t) => t.clone(),
    }
}

fn render_inline(r: &Row) -> String {
    let cells: Vec<String> = r
        .cells
        .iter()
        .map(|(k, v)| format!("{k}={}", fmt_cell(v)))
        .collect();
    format!("{}: {}", r.label, cells.join(" "))
}

/// A section as a text table.
pub fn render_section(s: &Section) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "== {}: {} ({:.0} s)", s.name, s.title, s.seconds);
    let mut columns: Vec<&str> = Vec::new();
    for r in &s.rows {
        for (c, _) in &r.cells {
            if !columns.contains(&c.as_str()) {
                columns.push(c);
            }
        }
    }
    if !s.rows.is_empty() {
        let grid: Vec<Vec<String>> = s
            .rows
            .iter()
            .map(|r| {
                let mut line = vec![r.label.clone()];
                for c in &columns {
                    line.push(
                        r.cells
                            .iter()
                            .find(|(k, _)| k == c)
                            .map(|(_, v)| fmt_cell(v))
                            .unwrap_or_else(|| "-".into()),
                    );
                }
                line
            })
            .collect();
        let mut header = vec![String::new()];
        header.extend(columns.iter().map(|c| c.to_string()));
        let widths: Vec<usize> = (0..header.len())
            .map(|i| {
                grid.iter()
                    .map(|l| l[i].len())
                    .chain([header[i].len()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let line = |cells: &[String]| -> String {
            cells
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    if i == 0 {
                        format!("{c:<w$}", w = widths[i])
                    } else {
                        format!("{c:>w$}", w = widths[i])
                    }
                })
                .collect::<Vec<_>>()
                .join("  ")
        };
        let _ = writeln!(out, "{}", line(&header));
        for l in &grid {
            let _ = writeln!(out, "{}", line(l));
        }
    }
    for n in &s.notes {
        let _ = writeln!(out, "  * {n}");
    }
    for k in &s.skipped {
        let _ = writeln!(out, "  skipped: {k}");
    }
    out
}

/// Percentile (nearest rank) of sorted values.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_line_up_and_percentiles_rank() {
        let mut s = Section::new("x", "test");
        s.rows
            .push(Row::new("a").set("rate", 1234.7).set("who", "c"));
        s.rows.push(Row::new("longer").set("rate", 2.0));
        let t = render_section(&s);
        assert!(t.contains("longer"), "{t}");
        assert!(t.contains("1235"), "{t}");
        assert!(t.lines().nth(3).unwrap().ends_with('-'), "{t}");
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&v, 100.0), 100.0);
        assert_eq!(s.rows[0].num("rate"), Some(1234.7));
    }
}
