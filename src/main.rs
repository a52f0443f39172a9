fn main() {
    let path = std::env::args().nth(1).unwrap();
    match goosepipe::manifest::load(std::path::Path::new(&path)) {
        Ok(m) => println!("ok: {} entities", m.entities.len()),
        Err(e) => eprintln!("{:?}", miette::Report::new(e)),
    }
}
