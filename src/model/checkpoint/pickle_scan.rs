//! A PyTorch checkpoint's pickle (`data.pkl` in a `pytorch_model.bin` or
//! `adapter_model.bin` zip), walked opcode by opcode before candle reads it: candle's
//! reader builds the objects recursively (300,000 nested tuples overflow the stack and
//! abort the process, no error to catch), and skips a tensor of a storage type it does
//! not know with a line on stderr (a module of an adapter then vanishes, silently).
//! The walk runs no code and builds nothing: it tracks how deeply each value on the
//! pickle machine's stack nests, the storage classes named, and how many storages are
//! loaded, so that a file candle cannot read faithfully is refused by name first.

use std::collections::{BTreeSet, HashMap};

/// Deeper than any checkpoint nests (a state dict is a dict of tensors, each rebuilt
/// from a tuple holding a tuple: about 5); far below what candle's recursion survives.
pub const MAX_DEPTH: u32 = 64;

/// The storage classes candle reads (`torch.FloatStorage`, ...).
pub const READ_STORAGES: &[&str] = &[
    "FloatStorage",
    "DoubleStorage",
    "HalfStorage",
    "BFloat16Storage",
    "ByteStorage",
    "LongStorage",
];

/// What the walk found.
#[derive(Debug, Default, PartialEq)]
pub struct Scanned {
    /// Storage classes the pickle names (`FloatStorage`, `IntStorage`, ...).
    pub storages: BTreeSet<String>,
    /// Persistent loads: one per tensor a state dict holds (PyTorch references a
    /// tensor's storage by a persistent id each time).
    pub persistent_loads: usize,
}

/// One value on the pickle machine's stack: how deeply it nests, and its text where
/// it is a string (STACK_GLOBAL names a class by the two strings below it).
#[derive(Clone)]
struct Item {
    depth: u32,
    text: Option<String>,
}

impl Item {
    fn leaf() -> Item {
        Item { depth: 1, text: None }
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len());
        let Some(end) = end else {
            return Err(format!("ends inside an opcode's argument (at byte {})", self.at));
        };
        let s = &self.bytes[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn uint(&mut self, n: usize) -> Result<u64, String> {
        let b = self.take(n)?;
        Ok(b.iter().rev().fold(0u64, |v, &x| (v << 8) | u64::from(x)))
    }
    fn line(&mut self) -> Result<&'a [u8], String> {
        let rest = &self.bytes[self.at..];
        let Some(n) = rest.iter().position(|&b| b == b'\n') else {
            return Err(format!("ends inside a line argument (at byte {})", self.at));
        };
        self.take(n + 1).map(|l| &l[..n])
    }
    /// A length-prefixed argument of a `width`-byte length.
    fn counted(&mut self, width: usize) -> Result<&'a [u8], String> {
        let n = self.uint(width)?;
        let n = usize::try_from(n).map_err(|_| format!("a length of {n} bytes"))?;
        self.take(n)
    }
}

struct Machine {
    stack: Vec<Item>,
    marks: Vec<usize>,
    memo: HashMap<u64, Item>,
}

impl Machine {
    fn push(&mut self, item: Item) -> Result<(), String> {
        if item.depth > MAX_DEPTH {
            return Err(format!(
                "its objects nest more than {MAX_DEPTH} deep (no checkpoint's do; reading them would overflow the stack)"
            ));
        }
        self.stack.push(item);
        Ok(())
    }
    fn pop(&mut self) -> Result<Item, String> {
        self.stack.pop().ok_or_else(|| "pops an empty stack".to_string())
    }
    /// The items above the last mark, taken off with it.
    fn pop_mark(&mut self) -> Result<Vec<Item>, String> {
        let at = self.marks.pop().ok_or("has no mark to pop to")?;
        if at > self.stack.len() {
            return Err("pops below its mark".into());
        }
        Ok(self.stack.split_off(at))
    }
    /// A container made of `items` (a tuple, a call's result).
    fn built(&mut self, items: &[Item]) -> Result<(), String> {
        let depth = items.iter().map(|i| i.depth).max().unwrap_or(0) + 1;
        self.push(Item { depth, text: None })
    }
    /// `items` added into the value on top (APPEND, SETITEM, BUILD, ...).
    fn grown(&mut self, items: &[Item]) -> Result<(), String> {
        let inner = items.iter().map(|i| i.depth).max().unwrap_or(0) + 1;
        let top = self.pop()?;
        self.push(Item {
            depth: top.depth.max(inner),
            text: None,
        })
    }
}

/// Walks `pickle` (the bytes of a `data.pkl`) to its STOP; an error says what is
/// wrong with it, for the caller to name the file.
pub fn scan(pickle: &[u8]) -> Result<Scanned, String> {
    let mut r = Reader { bytes: pickle, at: 0 };
    let mut m = Machine {
        stack: vec![],
        marks: vec![],
        memo: HashMap::new(),
    };
    let mut found = Scanned::default();
    let mut class = |module: &str, name: &str| {
        if module == "torch" && name.ends_with("Storage") {
            found.storages.insert(name.to_string());
        }
    };
    let mut loads = 0usize;
    loop {
        let at = r.at;
        let op = r.take(1).map_err(|_| "ends without STOP".to_string())?[0];
        match op {
            // Constants: numbers, strings, None, booleans, empty containers.
            b'I' | b'L' | b'F' => {
                r.line()?;
                m.push(Item::leaf())?;
            }
            // Integers, floats and extension codes of a fixed width.
            b'J' | b'K' | b'M' | b'G' | 0x82 | 0x83 | 0x84 => {
                r.take(match op {
                    b'K' | 0x82 => 1,
                    b'M' | 0x83 => 2,
                    b'J' | 0x84 => 4,
                    _ => 8,
                })?;
                m.push(Item::leaf())?;
            }
            // Long integers of a counted length.
            0x8a | 0x8b => {
                r.counted(if op == 0x8a { 1 } else { 4 })?;
                m.push(Item::leaf())?;
            }
            b'S' | b'V' => {
                let text = String::from_utf8_lossy(r.line()?).into_owned();
                m.push(Item {
                    depth: 1,
                    text: Some(text),
                })?;
            }
            b'T' | b'X' | b'U' | 0x8c | 0x8d => {
                let width = match op {
                    b'T' | b'X' => 4,
                    b'U' | 0x8c => 1,
                    _ => 8,
                };
                let text = String::from_utf8_lossy(r.counted(width)?).into_owned();
                m.push(Item {
                    depth: 1,
                    text: Some(text),
                })?;
            }
            b'B' | b'C' | 0x8e | 0x96 => {
                let width = match op {
                    b'B' => 4,
                    b'C' => 1,
                    _ => 8,
                };
                r.counted(width)?;
                m.push(Item::leaf())?;
            }
            b'N' | 0x88 | 0x89 | b']' | b')' | b'}' | 0x8f => m.push(Item::leaf())?,
            // Containers from the items above a mark, or the top few.
            b'(' => m.marks.push(m.stack.len()),
            b't' | b'l' | b'd' | 0x91 | b'o' => {
                let items = m.pop_mark()?;
                m.built(&items)?;
            }
            0x85..=0x87 => {
                let n = usize::from(op - 0x84);
                if m.stack.len() < n {
                    return Err(format!("pops an empty stack (at byte {at})"));
                }
                let items = m.stack.split_off(m.stack.len() - n);
                m.built(&items)?;
            }
            b'a' | b'b' => {
                let item = m.pop()?;
                m.grown(&[item])?;
            }
            b's' => {
                let (v, k) = (m.pop()?, m.pop()?);
                m.grown(&[k, v])?;
            }
            b'e' | b'u' | 0x90 => {
                let items = m.pop_mark()?;
                m.grown(&items)?;
            }
            // Calls: a class (or function) and its arguments make one value.
            b'R' | 0x81 => {
                let (args, callable) = (m.pop()?, m.pop()?);
                m.built(&[callable, args])?;
            }
            0x92 => {
                let (kwargs, args, cls) = (m.pop()?, m.pop()?, m.pop()?);
                m.built(&[cls, args, kwargs])?;
            }
            b'c' | b'i' => {
                let module = String::from_utf8_lossy(r.line()?).into_owned();
                let name = String::from_utf8_lossy(r.line()?).into_owned();
                class(&module, &name);
                if op == b'i' {
                    let items = m.pop_mark()?;
                    m.built(&items)?;
                } else {
                    m.push(Item::leaf())?;
                }
            }
            0x93 => {
                let (name, module) = (m.pop()?, m.pop()?);
                if let (Some(module), Some(name)) = (&module.text, &name.text) {
                    class(module, name);
                }
                m.push(Item::leaf())?;
            }
            b'P' => {
                r.line()?;
                loads += 1;
                m.push(Item::leaf())?;
            }
            b'Q' => {
                let id = m.pop()?;
                loads += 1;
                m.built(&[id])?;
            }
            // The stack and the memo.
            b'0' => {
                m.pop()?;
            }
            b'1' => {
                m.pop_mark()?;
            }
            b'2' => {
                let top = m.stack.last().cloned().ok_or("duplicates an empty stack")?;
                m.push(top)?;
            }
            b'p' | b'q' | b'r' | 0x94 => {
                let id = match op {
                    b'p' => parse_decimal(r.line()?)?,
                    b'q' => r.uint(1)?,
                    b'r' => r.uint(4)?,
                    _ => m.memo.len() as u64,
                };
                let top = m.stack.last().cloned().ok_or("memoizes an empty stack")?;
                m.memo.insert(id, top);
            }
            b'g' | b'h' | b'j' => {
                let id = match op {
                    b'g' => parse_decimal(r.line()?)?,
                    b'h' => r.uint(1)?,
                    _ => r.uint(4)?,
                };
                let item = m
                    .memo
                    .get(&id)
                    .cloned()
                    .ok_or_else(|| format!("reads memo entry {id}, which was never stored"))?;
                m.push(item)?;
            }
            0x80 => {
                r.take(1)?;
            }
            0x95 => {
                r.take(8)?;
            }
            b'.' => break,
            other => {
                return Err(format!(
                    "has opcode 0x{other:02x} at byte {at}, which no PyTorch checkpoint uses"
                ));
            }
        }
    }
    found.persistent_loads = loads;
    Ok(found)
}

fn parse_decimal(line: &[u8]) -> Result<u64, String> {
    std::str::from_utf8(line)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| "has a memo index that is not a number".to_string())
}

#[cfg(test)]
/// A state dict of one float tensor, as `torch.save` writes it (protocol 2):
/// {"w": _rebuild_tensor_v2(persistent(("storage", FloatStorage, "0", "cpu", 4)), 0, (2, 2), (2, 1), False, OrderedDict())}.
pub(crate) fn one_tensor(storage: &str) -> Vec<u8> {
    let text = |p: &mut Vec<u8>, t: &str| {
        p.push(b'X');
        p.extend((t.len() as u32).to_le_bytes());
        p.extend(t.as_bytes());
    };
    let mut p = vec![0x80, 2, b'}', b'q', 0, b'('];
    text(&mut p, "w");
    p.extend(b"ctorch._utils\n_rebuild_tensor_v2\n((");
    text(&mut p, "storage");
    p.extend(format!("ctorch\n{storage}\n").as_bytes());
    text(&mut p, "0");
    text(&mut p, "cpu");
    // numel 4, the persistent id's tuple, loaded; offset 0, size (2, 2), stride (2, 1).
    p.extend([b'K', 4, b't', b'Q', b'K', 0]);
    p.extend([b'K', 2, b'K', 2, 0x86, b'K', 2, b'K', 1, 0x86, 0x89]);
    p.extend(b"ccollections\nOrderedDict\n)R");
    p.extend([b't', b'R', b'u', b'.']);
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_dict_is_walked_and_its_storages_named() {
        let found = scan(&one_tensor("FloatStorage")).unwrap();
        assert_eq!(found.persistent_loads, 1);
        assert_eq!(found.storages, BTreeSet::from(["FloatStorage".to_string()]));
        let found = scan(&one_tensor("IntStorage")).unwrap();
        assert_eq!(found.storages, BTreeSet::from(["IntStorage".to_string()]));
    }

    #[test]
    fn deep_nesting_and_broken_streams_are_refused() {
        // 300,000 nested one-tuples: what overflowed candle's reader.
        let mut deep = vec![0x80, 2, b'N'];
        deep.extend(std::iter::repeat_n(0x85, 300_000));
        deep.push(b'.');
        let e = scan(&deep).unwrap_err();
        assert!(e.contains("nest more than 64 deep"), "{e}");
        // Lists appended into lists: flat (each into the first) is fine, nested
        // (each into the one below it) is refused.
        let mut flat = vec![0x80, 2, b']'];
        for _ in 0..100 {
            flat.extend([b']', b'a']);
        }
        flat.push(b'.');
        assert!(scan(&flat).is_ok());
        let mut nested = vec![0x80, 2];
        nested.extend([b']'; 100]);
        nested.extend([b'a'; 99]);
        nested.push(b'.');
        assert!(scan(&nested).unwrap_err().contains("nest more than 64 deep"));
        for (bytes, said) in [
            (&b"\x80\x02N"[..], "ends without STOP"),
            (
                &b"\x80\x02X\xff\xff\xff\x00"[..],
                "ends inside an opcode's argument",
            ),
            (&b"\x80\x02t."[..], "has no mark"),
            (&b"\x80\x02h\x07."[..], "memo entry 7"),
            (&b"\x80\x02\xff."[..], "opcode 0xff"),
            (&b"\x80\x02R."[..], "pops an empty stack"),
        ] {
            let e = scan(bytes).unwrap_err();
            assert!(e.contains(said), "{bytes:?}: {e}");
        }
    }
}
