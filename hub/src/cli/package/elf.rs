//! Whether an `edgeship-agent` binary can run alone in an image with no base image: a
//! 64-bit ELF executable, statically linked, and for which architecture.

/// What a static agent binary is built for, read from its ELF header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StaticBinary {
    /// The OCI architecture name: `amd64`, `arm64`.
    pub architecture: &'static str,
}

/// Checks that `bytes` is a 64-bit little-endian ELF executable with no program interpreter
/// (statically linked: a `scratch` image has no dynamic loader or libc), and for which
/// architecture.
pub fn check_static(bytes: &[u8]) -> Result<StaticBinary, String> {
    let field = |at: usize, len: usize| bytes.get(at..at + len);
    if field(0, 4) != Some(b"\x7fELF") {
        return Err("is not an ELF executable".into());
    }
    if field(4, 2) != Some(&[2, 1]) {
        return Err("is not a 64-bit little-endian ELF executable".into());
    }
    let u16_at = |at: usize| field(at, 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let architecture = match u16_at(0x12) {
        Some(0x3e) => "amd64",
        Some(0xb7) => "arm64",
        other => {
            return Err(format!(
                "is built for ELF machine {other:?}, not x86_64 or aarch64"
            ));
        }
    };
    let offset = field(0x20, 8)
        .map(|b| u64::from_le_bytes(b.try_into().unwrap_or_default()))
        .ok_or("has a truncated ELF header")?;
    let (Some(size), Some(count)) = (u16_at(0x36), u16_at(0x38)) else {
        return Err("has a truncated ELF header".into());
    };
    for index in 0..usize::from(count) {
        let at = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .saturating_add(index * usize::from(size));
        let kind = field(at, 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .ok_or("has a truncated ELF program header table")?;
        // PT_INTERP: the binary asks for a dynamic loader.
        if kind == 3 {
            return Err("is dynamically linked (it names a program interpreter); a scratch image needs a static agent".into());
        }
    }
    Ok(StaticBinary { architecture })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn elf(machine: u16, interpreter: bool) -> Vec<u8> {
        let mut bytes = vec![0u8; 0x40 + 2 * 56];
        bytes[..4].copy_from_slice(b"\x7fELF");
        bytes[4] = 2;
        bytes[5] = 1;
        bytes[0x12..0x14].copy_from_slice(&machine.to_le_bytes());
        bytes[0x20..0x28].copy_from_slice(&0x40u64.to_le_bytes());
        bytes[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        bytes[0x38..0x3a].copy_from_slice(&2u16.to_le_bytes());
        // PT_LOAD, then PT_INTERP or PT_NOTE.
        bytes[0x40..0x44].copy_from_slice(&1u32.to_le_bytes());
        let second: u32 = if interpreter { 3 } else { 4 };
        bytes[0x40 + 56..0x40 + 60].copy_from_slice(&second.to_le_bytes());
        bytes
    }

    #[test]
    fn only_a_static_elf_executable_is_packaged() {
        assert_eq!(
            check_static(&elf(0x3e, false)),
            Ok(StaticBinary {
                architecture: "amd64"
            })
        );
        assert_eq!(
            check_static(&elf(0xb7, false)),
            Ok(StaticBinary {
                architecture: "arm64"
            })
        );
        let dynamic = check_static(&elf(0x3e, true)).expect_err("interpreter");
        assert!(dynamic.contains("dynamically linked"), "{dynamic}");
        assert!(
            check_static(b"#!/bin/sh\n")
                .expect_err("script")
                .contains("not an ELF")
        );
        assert!(
            check_static(&elf(0x28, false))
                .expect_err("arm32")
                .contains("machine")
        );
        let mut truncated = elf(0x3e, false);
        truncated.truncate(0x40 + 10);
        assert!(
            check_static(&truncated)
                .expect_err("cut")
                .contains("truncated")
        );
        // The test binary itself is dynamically linked.
        let this = std::fs::read(std::env::current_exe().expect("exe")).expect("read");
        assert!(check_static(&this).is_err());
    }
}
