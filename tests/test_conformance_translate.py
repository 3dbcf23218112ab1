"""ebRIM 2.1 → 3.0, as the toolkit converts test kit metadata before sending it."""
import os

from lxml import etree

from conformance import translate
from xds import constants as C

ENTRY = os.path.join(os.path.dirname(__file__), "fixtures", "conformance", "kit", "testkit", "tests", "T100",
                     "submit", "entry.xml")
R = C.NS_RIM


def _v3():
    return translate.to_v3(etree.parse(ENTRY).getroot())


def test_namespaces_and_object_list():
    out = _v3()
    assert out.tag == C.q(C.NS_LCM, "SubmitObjectsRequest")
    rol = out.find(C.q(R, "RegistryObjectList"))
    assert rol is not None
    assert not translate.is_v2(out)
    assert all(etree.QName(e).namespace in (C.NS_RIM, C.NS_LCM) for e in out.iter(etree.Element))


def test_object_refs_dropped_and_top_level_marker_kept():
    rol = _v3().find(C.q(R, "RegistryObjectList"))
    tags = [etree.QName(c).localname for c in rol]
    assert "ObjectRef" not in tags
    assert tags == ["ExtrinsicObject", "RegistryPackage", "Classification", "Association"]
    marker = rol.find(C.q(R, "Classification"))
    assert marker.get("classificationNode") == C.SS_CLASSIFICATION_NODE and marker.get("classifiedObject") == "Set1"
    assert marker.get("id").startswith("id_")


def test_child_order_follows_the_v3_schema():
    eo = _v3().find(f"{C.q(R, 'RegistryObjectList')}/{C.q(R, 'ExtrinsicObject')}")
    order = [etree.QName(c).localname for c in eo]
    # the file has Name and Description before the Slots; 3.0 wants Slots first
    first_other = {name: order.index(name) for name in ("Slot", "Name", "Description", "Classification",
                                                         "ExternalIdentifier")}
    assert first_other["Slot"] < first_other["Name"] < first_other["Description"] < first_other["Classification"] \
        < first_other["ExternalIdentifier"]
    assert order == sorted(order, key=["Slot", "Name", "Description", "VersionInfo", "Classification",
                                       "ExternalIdentifier"].index)


def test_ids_types_and_references_made_explicit():
    out = _v3()
    eo = out.find(f".//{C.q(R, 'ExtrinsicObject')}")
    assert eo.get("objectType") == C.OBJECT_TYPE_STABLE  # a DocumentEntry keeps its own type
    for cl in eo.findall(C.q(R, "Classification")):
        assert cl.get("id").startswith("id_") and cl.get("classifiedObject") == "Entry1"
        assert cl.get("objectType") == C.OBJECT_TYPE_CLASSIFICATION
    for ei in eo.findall(C.q(R, "ExternalIdentifier")):
        assert ei.get("id") and ei.get("registryObject") == "Entry1"
        assert ei.get("objectType") == C.OBJECT_TYPE_EXTERNAL_IDENTIFIER
    pkg = out.find(f".//{C.q(R, 'RegistryPackage')}")
    assert pkg.get("objectType") == C.OBJECT_TYPE_REGISTRY_PACKAGE
    assoc = out.find(f".//{C.q(R, 'Association')}")
    assert assoc.get("associationType") == C.ASSOC_HAS_MEMBER
    assert assoc.get("objectType") == C.OBJECT_TYPE_ASSOCIATION
    ids = [e.get("id") for e in out.iter(etree.Element) if e.get("id")]
    assert len(ids) == len(set(ids))


def test_language_attribute_becomes_xml_lang():
    ls = _v3().find(f".//{C.q(R, 'Name')}/{C.q(R, 'LocalizedString')}")
    assert ls.get(translate.XML_LANG) == "en-us" and ls.get("lang") is None


def test_association_types_statuses_and_versions():
    v2 = etree.fromstring(f"""<rs:SubmitObjectsRequest xmlns:rs="{translate.NS_RS21}">
      <rim:LeafRegistryObjectList xmlns:rim="{translate.NS_RIM21}">
        <rim:Association sourceObject="a" targetObject="b" associationType="RPLC" status="Approved"
                         majorVersion="1" minorVersion="0"/>
        <rim:Association id="x" sourceObject="a" targetObject="b" associationType="urn:custom:Keep"/>
      </rim:LeafRegistryObjectList></rs:SubmitObjectsRequest>""")
    first, second = translate.to_v3(v2).iter(C.q(R, "Association"))
    assert first.get("associationType") == C.ASSOC_RPLC
    assert first.get("status") == C.STATUS_APPROVED
    assert first.get("majorVersion") is None and first.get("minorVersion") is None
    assert second.get("id") == "x" and second.get("associationType") == "urn:custom:Keep"
    assert translate.association_type("XFRM_RPLC") == C.ASSOC_XFRM_RPLC


def test_v3_input_is_left_alone():
    v3 = etree.fromstring(f'<lcm:SubmitObjectsRequest xmlns:lcm="{C.NS_LCM}"><rim:RegistryObjectList '
                          f'xmlns:rim="{C.NS_RIM}"><rim:ObjectRef id="urn:uuid:1"/></rim:RegistryObjectList>'
                          f'</lcm:SubmitObjectsRequest>')
    assert translate.to_v3(v3) is v3
