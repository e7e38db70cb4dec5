//! Line tables: from an instruction's byte offset in a code object to its source line.

/// 3.10 (`co_linetable`, Objects/lnotab_notes.txt of 3.10): pairs of (bytecode delta,
/// unsigned; line delta, signed), the line delta -128 meaning "no line"; each pair is a
/// range [end, end + delta) at the running line (Objects/codeobject.c, PyCode_Addr2Line
/// and advance()).
pub(crate) fn line_310(table: &[u8], firstlineno: u32, offset: i64) -> Option<u32> {
    if offset < 0 {
        return Some(firstlineno);
    }
    let (mut end, mut line) = (0i64, firstlineno as i64);
    for pair in table.chunks_exact(2) {
        let start = end;
        end += pair[0] as i64;
        let delta = pair[1] as i8;
        let this = if delta == -128 {
            None
        } else {
            line = line.saturating_add(delta as i64);
            Some(line)
        };
        if start <= offset && offset < end {
            return this.and_then(|l| u32::try_from(l).ok());
        }
    }
    None
}

/// 3.11+ location table (Objects/locations.md): entries starting with a byte whose top
/// bit is set, `code = (b >> 3) & 15`, covering `(b & 7) + 1` code units (2 bytes
/// each). Code 15: no location; 14 (long) and 13 (no columns): a signed varint line delta
/// follows; 10 to 12: line delta code - 10; 0 to 9: same line
/// (Objects/codeobject.c, get_line_delta and advance()).
pub(crate) fn line_311(table: &[u8], firstlineno: u32, offset: i64) -> Option<u32> {
    if offset < 0 {
        return Some(firstlineno);
    }
    // Saturating arithmetic throughout: the table comes from a traced process's memory.
    let (mut end, mut line, mut i) = (0i64, firstlineno as i64, 0usize);
    while i < table.len() {
        let first = table[i];
        let code = (first >> 3) & 15;
        let start = end;
        end += (((first & 7) as i64) + 1) * 2;
        let this = match code {
            15 => None,
            13 | 14 => {
                line = line.saturating_add(signed_varint(&table[i + 1..]));
                Some(line)
            }
            10..=12 => {
                line = line.saturating_add((code - 10) as i64);
                Some(line)
            }
            _ => Some(line),
        };
        if start <= offset && offset < end {
            return this.and_then(|l| u32::try_from(l).ok());
        }
        i += 1;
        while i < table.len() && table[i] & 0x80 == 0 {
            i += 1;
        }
    }
    None
}

/// 6 bits a byte, least significant first, bit 6 = more (scan_varint).
fn varint(bytes: &[u8]) -> u64 {
    let (mut value, mut shift) = (0u64, 0u32);
    for b in bytes {
        value |= ((b & 63) as u64) << shift;
        shift += 6;
        if b & 64 == 0 || shift > 60 {
            break;
        }
    }
    value
}

/// Sign in the lowest bit (scan_signed_varint).
fn signed_varint(bytes: &[u8]) -> i64 {
    let value = varint(bytes);
    if value & 1 != 0 { -((value >> 1) as i64) } else { (value >> 1) as i64 }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Line tables of real code objects, with the line of every instruction offset as the
    /// interpreter itself tells it (`co_lines()`), written by tests/workloads/linetables.py
    /// for each interpreter on the machine (3.14: Debian unstable's, run chrooted in its root):
    /// 3.14 keeps 3.11's location table format (Objects/locations.md).
    #[test]
    fn line_tables_of_real_code_objects() {
        let fixtures: serde_json::Value = serde_json::from_str(include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/python-linetables.json"
        )))
        .unwrap();
        let mut checked = std::collections::BTreeSet::new();
        for code in fixtures.as_array().unwrap() {
            let minor = code["minor"].as_u64().unwrap() as u32;
            let table: Vec<u8> = (0..code["linetable"].as_str().unwrap().len() / 2)
                .map(|i| {
                    u8::from_str_radix(&code["linetable"].as_str().unwrap()[i * 2..i * 2 + 2], 16).unwrap()
                })
                .collect();
            let first = code["firstlineno"].as_u64().unwrap() as u32;
            for case in code["lines"].as_array().unwrap() {
                let offset = case[0].as_i64().unwrap();
                let expected = case[1].as_u64().map(|l| l as u32);
                let got = if minor == 10 {
                    line_310(&table, first, offset)
                } else {
                    line_311(&table, first, offset)
                };
                assert_eq!(got, expected, "3.{minor} {} at offset {offset}", code["name"]);
            }
            checked.insert(minor);
        }
        assert_eq!(checked.into_iter().collect::<Vec<_>>(), vec![10, 11, 12, 13, 14]);
    }

    #[test]
    fn before_the_first_instruction_is_the_first_line() {
        assert_eq!(line_310(&[], 7, -2), Some(7));
        assert_eq!(line_311(&[], 7, -2), Some(7));
        // Past the table: unknown, not invented.
        assert_eq!(line_311(&[0x80 | (13 << 3), 2], 7, 100), None);
    }
}
