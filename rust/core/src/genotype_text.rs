//! Parser for the Python-literal genotype text that DARTS-family projects publish, e.g.
//! `DARTS_V2 = Genotype(normal=[('sep_conv_3x3', 0), ...], normal_concat=range(2, 6), reduce=[...], ...)`.

use crate::error::GenotypeError;
use crate::genotype::{CellGenotype, NetworkGenotype, DEFAULT_CONCAT};
use crate::space::AlphaMode;

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    Int(usize),
    Sym(char),
}

fn err(msg: impl Into<String>) -> GenotypeError {
    GenotypeError::Parse(msg.into())
}

fn tokenize(text: &str) -> Result<Vec<(usize, Tok)>, GenotypeError> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c.is_ascii_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == '.') {
                i += 1;
            }
            out.push((start, Tok::Ident(chars[start..i].iter().collect())));
        } else if c.is_ascii_digit() {
            let start = i;
            while i < chars.len() && chars[i].is_ascii_digit() {
                i += 1;
            }
            let s: String = chars[start..i].iter().collect();
            let v = s.parse().map_err(|_| {
                // The text comes from the caller: quote a long number by its length, not whole.
                let shown = if s.len() > 40 { format!("{}... ({} digits)", &s[..20], s.len()) } else { s.clone() };
                err(format!("number '{shown}' at character {start} is too large"))
            })?;
            out.push((start, Tok::Int(v)));
        } else if c == '\'' || c == '"' {
            let start = i;
            i += 1;
            while i < chars.len() && chars[i] != c {
                i += 1;
            }
            if i == chars.len() {
                return Err(err(format!("unterminated string starting at character {start}")));
            }
            out.push((start, Tok::Str(chars[start + 1..i].iter().collect())));
            i += 1;
        } else if "()[]=,".contains(c) {
            out.push((i, Tok::Sym(c)));
            i += 1;
        } else {
            return Err(err(format!("unexpected character '{c}' at character {i}")));
        }
    }
    Ok(out)
}

struct Parser {
    toks: Vec<(usize, Tok)>,
    pos: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos).map(|(_, t)| t)
    }

    fn where_(&self) -> String {
        match self.toks.get(self.pos) {
            Some((at, t)) => format!("{t:?} at character {at}"),
            None => "end of text".to_string(),
        }
    }

    fn next(&mut self) -> Option<Tok> {
        let t = self.toks.get(self.pos).map(|(_, t)| t.clone());
        self.pos += 1;
        t
    }

    fn expect_sym(&mut self, c: char) -> Result<(), GenotypeError> {
        let here = self.where_();
        match self.next() {
            Some(Tok::Sym(s)) if s == c => Ok(()),
            _ => Err(err(format!("expected '{c}', found {here}"))),
        }
    }

    fn eat_sym(&mut self, c: char) -> bool {
        if self.peek() == Some(&Tok::Sym(c)) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn int(&mut self) -> Result<usize, GenotypeError> {
        let here = self.where_();
        match self.next() {
            Some(Tok::Int(v)) => Ok(v),
            _ => Err(err(format!("expected an integer, found {here}"))),
        }
    }

    /// `[('op', 0), ...]`
    fn edges(&mut self) -> Result<Vec<(String, usize)>, GenotypeError> {
        self.expect_sym('[')?;
        let mut out = Vec::new();
        while !self.eat_sym(']') {
            self.expect_sym('(')?;
            let here = self.where_();
            let op = match self.next() {
                Some(Tok::Str(s)) => s,
                _ => return Err(err(format!("expected an op name in quotes, found {here}"))),
            };
            self.expect_sym(',')?;
            let input = self.int()?;
            self.expect_sym(')')?;
            out.push((op, input));
            if !self.eat_sym(',') {
                self.expect_sym(']')?;
                break;
            }
        }
        Ok(out)
    }

    /// `[2, 3, 4, 5]`, `range(2, 6)` or `list(range(2, 6))`.
    fn concat(&mut self) -> Result<Vec<usize>, GenotypeError> {
        match self.peek() {
            Some(Tok::Sym('[')) => {
                self.pos += 1;
                let mut out = Vec::new();
                while !self.eat_sym(']') {
                    out.push(self.int()?);
                    if !self.eat_sym(',') {
                        self.expect_sym(']')?;
                        break;
                    }
                }
                Ok(out)
            }
            Some(Tok::Ident(name)) if name == "list" => {
                self.pos += 1;
                self.expect_sym('(')?;
                let v = self.concat()?;
                self.expect_sym(')')?;
                Ok(v)
            }
            Some(Tok::Ident(name)) if name == "range" => {
                self.pos += 1;
                self.expect_sym('(')?;
                let a = self.int()?;
                self.expect_sym(',')?;
                let b = self.int()?;
                self.expect_sym(')')?;
                if b.saturating_sub(a) > 64 {
                    return Err(err(format!("range({a}, {b}) is not a list of cell nodes")));
                }
                Ok((a..b).collect())
            }
            _ => Err(err(format!("expected a list of nodes or range(a, b), found {}", self.where_()))),
        }
    }
}

/// Parse genotype text; see the module documentation.
pub(crate) fn parse(text: &str) -> Result<NetworkGenotype, GenotypeError> {
    let mut p = Parser { toks: tokenize(text)?, pos: 0 };
    // Optional `NAME =` prefix, then the constructor name.
    if matches!(p.toks.get(1), Some((_, Tok::Sym('=')))) {
        p.pos = 2;
    }
    match p.next() {
        Some(Tok::Ident(_)) => {}
        _ => {
            return Err(err(
                "expected text like Genotype(normal=[...], normal_concat=[...], reduce=[...], reduce_concat=[...])",
            ))
        }
    }
    p.expect_sym('(')?;
    let mut fields: Vec<(String, Vec<(String, usize)>)> = Vec::new();
    let mut concats: Vec<(String, Vec<usize>)> = Vec::new();
    while !p.eat_sym(')') {
        let here = p.where_();
        let key = match p.next() {
            Some(Tok::Ident(k)) => k,
            _ => return Err(err(format!("expected a field name, found {here}"))),
        };
        p.expect_sym('=')?;
        if let Some(table) = key.strip_suffix("_concat") {
            if concats.iter().any(|(k, _)| k == table) {
                return Err(err(format!("field '{key}' appears twice")));
            }
            let c = p.concat()?;
            concats.push((table.to_string(), c));
        } else {
            if fields.iter().any(|(k, _)| *k == key) {
                return Err(err(format!("field '{key}' appears twice")));
            }
            let e = p.edges()?;
            fields.push((key, e));
        }
        if !p.eat_sym(',') {
            p.expect_sym(')')?;
            break;
        }
    }
    if p.pos < p.toks.len() {
        return Err(err(format!("unexpected text after the genotype: {}", p.where_())));
    }
    let names: Vec<&str> = fields.iter().map(|(k, _)| k.as_str()).collect();
    let mode = [AlphaMode::Shared, AlphaMode::Multilevel]
        .into_iter()
        .find(|m| {
            let mut want = m.table_names().to_vec();
            let mut got = names.clone();
            want.sort_unstable();
            got.sort_unstable();
            want == got
        })
        .ok_or_else(|| {
            err(format!(
                "fields {names:?} are neither DARTS' (normal, reduce) nor multi-level ({})",
                AlphaMode::Multilevel.table_names().join(", ")
            ))
        })?;
    if let Some((k, _)) = concats.iter().find(|(k, _)| !mode.table_names().contains(&k.as_str())) {
        return Err(err(format!("field '{k}_concat' has no cell '{k}'")));
    }
    let mut cells = Vec::new();
    for t in mode.table_names() {
        let edges = &fields.iter().find(|(k, _)| k == t).expect("mode matched the field names").1;
        let concat =
            concats.iter().find(|(k, _)| k == t).map(|(_, c)| c.clone()).unwrap_or_else(|| DEFAULT_CONCAT.to_vec());
        cells.push(CellGenotype::from_named(edges, concat, t)?);
    }
    NetworkGenotype::new(mode, cells)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_numbers_are_parse_errors_quoted_briefly() {
        let text = |n: &str| format!("Genotype(normal=[('sep_conv_3x3', {n})], normal_concat=range(2, {n}))");
        let e = parse(&text("18446744073709551616")).unwrap_err().to_string();
        assert!(e.contains("number '18446744073709551616' at character 34 is too large"), "{e}");
        let e = parse(&text(&"9".repeat(100_000))).unwrap_err().to_string();
        assert!(e.contains("number '99999999999999999999... (100000 digits)'") && e.len() < 200, "{e}");
        let e = parse(&text("18446744073709551615")).unwrap_err().to_string();
        assert!(e.contains("range(2, 18446744073709551615) is not a list"), "{e}");
    }

    #[test]
    fn accepts_range_and_name_prefix() {
        let t = "PC_DARTS_cifar = Genotype(normal=[('sep_conv_3x3', 1), ('skip_connect', 0), ('sep_conv_3x3', 0), ('dil_conv_3x3', 1), ('sep_conv_5x5', 0), ('sep_conv_3x3', 1), ('avg_pool_3x3', 0), ('dil_conv_3x3', 1)], normal_concat=range(2, 6), reduce=[('sep_conv_5x5', 1), ('max_pool_3x3', 0), ('sep_conv_5x5', 1), ('sep_conv_5x5', 2), ('sep_conv_3x3', 0), ('sep_conv_3x3', 3), ('sep_conv_3x3', 1), ('sep_conv_3x3', 2)], reduce_concat=range(2, 6))";
        let g = parse(t).unwrap();
        assert_eq!(g.cells()[0].concat(), &[2, 3, 4, 5]);
        assert_eq!(parse(&g.to_text()).unwrap(), g);
    }

    #[test]
    fn reports_bad_text() {
        assert!(parse("Genotype(normal=[('sep_conv_3x3', 0)").is_err());
        assert!(parse("Genotype(foo=[])").unwrap_err().to_string().contains("neither"));
        let e = parse("Genotype(normal=[('conv_7x7', 0)], reduce=[])").unwrap_err().to_string();
        assert!(e.contains("normal.edges[0]: unknown op 'conv_7x7'"), "{e}");
        assert!(parse("Genotype(normal=[], normal=[], reduce=[])").unwrap_err().to_string().contains("twice"));
    }
}
