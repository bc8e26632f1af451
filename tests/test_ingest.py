def test_probe(engine):
    assert engine is not None
