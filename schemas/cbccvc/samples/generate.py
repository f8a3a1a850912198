#!/usr/bin/env python3
"""Writes the CBCCVC sample corpus: valid packets and invalid ones, each invalid file named after the rule it breaks.

File names: ``{MessageType}-{NN}-{rule}-{what}.{xml|json}``. ``rule`` is the code our validator reports first
(``xsd.*``/``json.*`` for schema rules, ``xml.*`` for well-formedness, domain codes such as ``cccd.province``).
Domain-invalid files are schema-valid: the reference tools (xmllint, python-jsonschema) call them valid.

Run from anywhere: ``python3 schemas/cbccvc/samples/generate.py``. The output is committed; rerun after changing
the base documents or the cases below.

The valid approvals (PheDuyetDuLieu) are signed for real, by ``lgsp-gateway sign`` (run through cargo) with the
sample signing keys in ``signing/`` (a person's and agency 000.00.00.H29's, from a sample CA that nothing trusts
but the tests). Invalid samples carry static signatures of the right shape: the schema is what they test.
"""

import copy
import json
import os
import shutil
import subprocess

HERE = os.path.dirname(os.path.abspath(__file__))
NS = "urn:lgsp:cbccvc:v1"
XSI = "http://www.w3.org/2001/XMLSchema-instance"

# Names that are arrays in JSON (maxOccurs > 1 in the XSD), JSON numbers and booleans.
ARRAYS = {"QuaTrinhCongTac", "QuaTrinhLuong", "DaoTao", "ChiTiet", "HoSo"}
INTS = {"BacLuong", "BienCheDuocGiao", "BienCheCoMat", "SoLuong", "SoLuongHoSo", "SoNamCongTac"}
BOOLS = {"HuongLuongHuu"}
NIL = object()  # an element with xsi:nil="true" (JSON null)
RAW = "__raw__"  # content (xml text, JSON signature entry): a signature, written as it is


def E(name, content, **attrs):
    """An element: name, content (text, list of elements, or NIL), attributes."""
    return [name, attrs, content]


def find(doc, *path):
    """The element at a path of names (first match at each level)."""
    node = doc
    for name in path:
        node = next(c for c in node[2] if c[0] == name)
    return node


def set_text(doc, path, text):
    find(doc, *path)[2] = text
    return doc


def remove(doc, path):
    parent = find(doc, *path[:-1])
    parent[2] = [c for c in parent[2] if c[0] != path[-1]]
    return doc


def insert_after(doc, path, element):
    parent = find(doc, *path[:-1])
    i = next(i for i, c in enumerate(parent[2]) if c[0] == path[-1])
    parent[2].insert(i + 1, element)
    return doc


def esc(s):
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def to_xml(doc, ns=NS):
    out = ['<?xml version="1.0" encoding="UTF-8"?>\n']

    def write(el, depth, root=False):
        name, attrs, content = el
        pad = "  " * depth
        if name == RAW:
            out.append(f"{pad}{content[0]}\n")
            return
        a = f' xmlns="{ns}"' if root and ns else ""
        if content is NIL:
            a += f' xmlns:xsi="{XSI}" xsi:nil="true"'
        a += "".join(f' {k}="{esc(v)}"' for k, v in attrs.items())
        if content is NIL:
            out.append(f"{pad}<{name}{a}/>\n")
        elif isinstance(content, list):
            out.append(f"{pad}<{name}{a}>\n")
            for c in content:
                write(c, depth + 1)
            out.append(f"{pad}</{name}>\n")
        else:
            out.append(f"{pad}<{name}{a}>{esc(content)}</{name}>\n")

    write(doc, 0, root=True)
    return "".join(out)


def to_json_value(el):
    name, attrs, content = el
    if content is NIL:
        return None
    if isinstance(content, list):
        obj = dict(attrs)
        for c in content:
            if c[0] == RAW:
                obj.setdefault("ChuKySo", []).append(copy.deepcopy(c[2][1]))
                continue
            v = to_json_value(c)
            if c[0] in ARRAYS:
                obj.setdefault(c[0], []).append(v)
            else:
                obj[c[0]] = v
        return obj
    if attrs:  # simpleContent with attributes
        obj = {"giaTri": content}
        obj.update(attrs)
        return obj
    if name in INTS:
        return int(content)
    if name in BOOLS and content in ("true", "false", "1", "0"):
        return content in ("true", "1")
    return content


def to_json(doc):
    return {doc[0]: to_json_value(doc)}


# ─── Base documents ──────────────────────────────────────────────────────────────────────────────────────────────


def hoso(full=True, cccd="001090012345", sinh="1990-05-12", gioi="Nam", action="TaoMoi", version="1.0",
         loai=None, ngach="01.003", hang=None, bac="3", he_so="3.00", dan_toc="Kinh", ton_giao="Không"):
    """A profile; `version` 1.1 with `loai` (LoaiCanBo) and `hang` (HangChucDanh) for a professional title."""
    children = [
        E("MaDonVi", "000.00.00.H29"),
        E("SoCCCD", cccd),
        E("HoVaTen", "Nguyễn Văn An"),
        E("NgaySinh", sinh),
        E("GioiTinh", gioi),
        E("DanToc", dan_toc),
    ]
    if full:
        children += [E("TonGiao", ton_giao), E("QueQuan", "Hà Nội"), E("ChucVu", "Chuyên viên")]
    if loai:
        children.append(E("LoaiCanBo", loai))
    children.append(E("MaNgach", ngach))
    if hang:
        children.append(E("HangChucDanh", hang))
    children += [
        E("BacLuong", bac),
        E("HeSoLuong", he_so),
        E("NgayTuyenDung", "2015-09-01"),
        E("TrinhDoChuyenMon", "DaiHoc"),
    ]
    if full:
        children += [
            E("LyLuanChinhTri", "TrungCap"),
            E("QuaTrinhCongTac", [E("NgayBatDau", "2015-09-01"), E("NgayKetThuc", "2019-12-31"), E("DonViCongTac", "Sở Nội vụ")]),
            E("QuaTrinhCongTac", [E("NgayBatDau", "2020-01-01"), E("DonViCongTac", "Văn phòng UBND tỉnh"), E("ChucVu", "Chuyên viên")]),
            E("QuaTrinhLuong", [E("NgayHuong", "2021-09-01"), E("MaNgach", ngach), E("BacLuong", bac), E("HeSoLuong", he_so)]),
            E("DaoTao", [E("TenCoSo", "Học viện Hành chính Quốc gia"), E("ChuyenNganh", "Quản lý nhà nước"), E("TrinhDo", "DaiHoc"), E("NamTotNghiep", "2013")]),
        ]
    return E("HoSoCBCCVC", children, phienBan=version, loaiThaoTac=action)


def giao_vien(**kw):
    """A primary-school teacher (giáo viên tiểu học hạng III, V.07.03.29, salary group A1), step 2: a public
    employee's profile in format 1.1."""
    args = dict(version="1.1", loai="VienChuc", ngach="V.07.03.29", hang="III", bac="2", he_so="2.67")
    args.update(kw)
    return hoso(**args)


def bienche(rows=2, codes=None):
    codes = codes or [f"01.00{i + 1}" for i in range(rows)]
    chi_tiet = [E("ChiTiet", [E("MaNgach", codes[i]), E("SoLuong", str(10 * (i + 1)))]) for i in range(rows)]
    co_mat = sum(10 * (i + 1) for i in range(rows))
    return E("BienChe", [
        E("MaDonVi", "000.00.00.H29"),
        E("Nam", "2026"),
        E("BienCheDuocGiao", str(co_mat + 5)),
        E("BienCheCoMat", str(co_mat)),
        *chi_tiet,
        E("NguoiLap", "Trần Thị Bình"),
        E("NgayLap", "2026-10-15"),
    ], phienBan="1.0")


DS = "http://www.w3.org/2000/09/xmldsig#"
FILTER2 = "http://www.w3.org/2002/06/xmldsig-filter2"
B64 = "MEUCIQDx7fWcVbH0gkq1vRjkEmRYSVn2ZJfV8cYq3x0iQw9b2AIgZq1lZ3Jr5yUo6m3kq8s7b5T1aB2cD3eF4gH5iJ6kL7M="
# A signature of the profile's shape (xmldsig-profile.xsd) whose values sign nothing.
SIG_XML = (
    f'<ds:Signature xmlns:ds="{DS}"><ds:SignedInfo>'
    '<ds:CanonicalizationMethod Algorithm="http://www.w3.org/2001/10/xml-exc-c14n#"/>'
    '<ds:SignatureMethod Algorithm="http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha256"/>'
    '<ds:Reference URI=""><ds:Transforms>'
    f'<ds:Transform Algorithm="{FILTER2}"><dsig-xpath:XPath xmlns:dsig-xpath="{FILTER2}" Filter="subtract">//ds:Signature</dsig-xpath:XPath></ds:Transform>'
    '<ds:Transform Algorithm="http://www.w3.org/2001/10/xml-exc-c14n#"/></ds:Transforms>'
    '<ds:DigestMethod Algorithm="http://www.w3.org/2001/04/xmlenc#sha256"/>'
    '<ds:DigestValue>47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=</ds:DigestValue></ds:Reference></ds:SignedInfo>'
    f'<ds:SignatureValue>{B64}</ds:SignatureValue>'
    f'<ds:KeyInfo><ds:X509Data><ds:X509Certificate>{B64}</ds:X509Certificate></ds:X509Data></ds:KeyInfo></ds:Signature>'
)
# A JWS signature entry of the right shape (base64url of {"alg":"ES256","x5c":["…"]}) that signs nothing.
SIG_JWS = {
    "protected": "eyJhbGciOiJFUzI1NiIsIng1YyI6WyJNRVVDSVFEeDdmV2NWYkgwZ2txMXZSamtFbVJZU1ZuMlpKZlY4Y1lxM3gwaVF3OWIyQUlnWnExbFozSnI1eVVvNm0za3E4czdiNVQxYUIyY0QzZUY0Z0g1aUo2a0w3TT0iXX0",
    "signature": "8J7LoVJpHKzfQbRmX1aWqLcA5sT0uG2yN3vD4eF6hI9jK0lM1nO2pQ3rS4tU5vW6xY7zA8bC9dE0fG1hI2jK3w",
}
SIGNING = os.path.join(HERE, "signing")


def signatures(n=2):
    return [E(RAW, (SIG_XML, SIG_JWS)) for _ in range(n)]


def pheduyet(n=2, signed=True):
    hoso_rows = [
        E("HoSo", [E("SoCCCD", f"00109001234{i}"), E("MaBanGhi", f"HS-2026-10-{i:04d}"), E("BamSHA256", f"{i:x}" * 64 if i < 10 else "a" * 64)])
        for i in range(1, n + 1)
    ]
    return E("PheDuyetDuLieu", [
        E("MaDonVi", "000.00.00.H29"),
        E("KyPheDuyet", "2026-10"),
        E("NguoiPheDuyet", "Lê Văn Cường"),
        E("ThoiDiemPheDuyet", "2026-10-31T16:30:00+07:00"),
        E("SoLuongHoSo", str(n)),
        *hoso_rows,
        *(signatures() if signed else []),
    ], phienBan="1.0")


def biendong(kind="DieuDong"):
    bodies = {
        "DieuDong": [E("MaDonViMoi", "000.00.00.H26"), E("TenDonViMoi", "Sở Tài chính")],
        "LuanChuyen": [E("TenDonViMoi", "UBND huyện"), E("MaDonViMoi", "000.01.00.H29"), E("ChucVuMoi", "Phó Chủ tịch")],
        "NghiHuu": [E("SoNamCongTac", "35"), E("HuongLuongHuu", "true")],
        "ThoiViec": [E("LyDo", "Theo nguyện vọng")],
        "BuocThoiViec": [E("LyDo", "Kỷ luật")],
        "TuTran": [E("LyDo", "Ốm đau")],
    }
    return E("BienDong", [
        E("MaDonVi", "000.00.00.H29"),
        E("SoCCCD", "001090012345"),
        E("HoVaTen", "Nguyễn Văn An"),
        E("NgayHieuLuc", "2026-11-01"),
        E("SoQuyetDinh", "123/QĐ-UBND"),
        E(kind, bodies[kind]),
    ], phienBan="1.0")


def with_ghichu(doc, content):
    doc[2].append(E("GhiChu", content))
    return doc


VALID = [
    ("HoSoCBCCVC", "day-du", hoso()),
    ("HoSoCBCCVC", "toi-thieu", hoso(full=False)),
    ("HoSoCBCCVC", "cap-nhat", hoso(action="CapNhat")),
    ("HoSoCBCCVC", "nu-sinh-2001", hoso(full=False, cccd="079301004567", sinh="2001-03-09", gioi="Nu")),
    ("HoSoCBCCVC", "chuc-vu-nil", set_text(hoso(), ["ChucVu"], NIL)),
    ("HoSoCBCCVC", "khong-loai-thao-tac", (lambda d: (d[1].pop("loaiThaoTac"), d)[1])(hoso())),
    ("HoSoCBCCVC", "giao-vien-tieu-hoc-v1.1", giao_vien()),
    ("HoSoCBCCVC", "giao-vien-thpt-bac-9", giao_vien(ngach="V.07.05.15", bac="9", he_so="4.98", full=False)),
    ("HoSoCBCCVC", "bac-si-hang-II", giao_vien(ngach="V.08.01.02", hang="II", bac="1", he_so="4.40")),
    ("HoSoCBCCVC", "cong-chuc-v1.1", hoso(version="1.1", loai="CongChuc")),
    ("HoSoCBCCVC", "dan-toc-va-ton-giao-theo-ma", hoso(dan_toc="02", ton_giao="01")),
    ("HoSoCBCCVC", "khai-sinh-o-nuoc-ngoai", hoso(cccd="840090012345")),
    ("HoSoCBCCVC", "nguoi-lao-dong", hoso(version="1.1", loai="NguoiLaoDong", ngach="01.005", bac="12", he_so="4.06")),
    ("BienChe", "hai-ngach", bienche()),
    ("BienChe", "mot-ngach", bienche(rows=1)),
    ("BienChe", "nam-ngach", bienche(rows=5)),
    ("BienChe", "khong-co-mat", set_text(set_text(bienche(rows=1), ["BienCheCoMat"], "0"), ["ChiTiet", "SoLuong"], "0")),
    ("BienChe", "truong-hoc", bienche(rows=3, codes=["V.07.03.27", "V.07.03.28", "V.07.03.29"])),
    ("PheDuyetDuLieu", "hai-ho-so", pheduyet(signed=False)),
    ("PheDuyetDuLieu", "mot-ho-so", pheduyet(n=1, signed=False)),
    ("PheDuyetDuLieu", "gio-utc", set_text(pheduyet(signed=False), ["ThoiDiemPheDuyet"], "2026-10-31T09:30:00Z")),
    ("BienDong", "dieu-dong", biendong("DieuDong")),
    ("BienDong", "luan-chuyen-thu-tu-khac", biendong("LuanChuyen")),
    ("BienDong", "nghi-huu", biendong("NghiHuu")),
    ("BienDong", "thoi-viec", biendong("ThoiViec")),
    ("BienDong", "buoc-thoi-viec-ghi-chu", with_ghichu(biendong("BuocThoiViec"), "Theo Quyết định số 12")),
    ("BienDong", "tu-tran-ghi-chu-nil", with_ghichu(biendong("TuTran"), NIL)),
]

# ─── Invalid cases shared by both formats: (type, rule for XML, rule for JSON, slug, document) ─────────────────────
# A rule of None means the case does not exist in that format.

S = "xsd"  # rule prefix for XML schema rules
J = "json"


def both(t, xml_rule, json_rule, slug, doc):
    return (t, xml_rule, json_rule, slug, doc)


INVALID = [
    both("HoSoCBCCVC", "xsd.missing_element", "json.required", "thieu-HoVaTen", remove(hoso(), ["HoVaTen"])),
    both("HoSoCBCCVC", "xsd.missing_element", "json.required", "thieu-SoCCCD", remove(hoso(), ["SoCCCD"])),
    both("HoSoCBCCVC", "xsd.unexpected_element", "json.additional_properties", "phan-tu-la", insert_after(hoso(), ["DanToc"], E("BiDanh", "An"))),
    both("HoSoCBCCVC", "xsd.pattern", "json.pattern", "SoCCCD-11-chu-so", set_text(hoso(), ["SoCCCD"], "00109001234")),
    both("HoSoCBCCVC", "xsd.pattern", "json.pattern", "SoCCCD-co-chu", set_text(hoso(), ["SoCCCD"], "00109001234A")),
    both("HoSoCBCCVC", "xsd.pattern", "json.pattern", "MaDonVi-chu-thuong", set_text(hoso(), ["MaDonVi"], "000.00.00.h29")),
    both("HoSoCBCCVC", "xsd.max_length", "json.max_length", "MaDonVi-qua-dai", set_text(hoso(), ["MaDonVi"], "000.00.00.H29.0000000000.0000000000.00")),
    both("HoSoCBCCVC", "xsd.min_length", "json.min_length", "HoVaTen-mot-ky-tu", set_text(hoso(), ["HoVaTen"], "A")),
    both("HoSoCBCCVC", "xsd.enumeration", "json.enum", "GioiTinh-tieng-anh", set_text(hoso(), ["GioiTinh"], "Male")),
    both("HoSoCBCCVC", "xsd.invalid_value", "json.pattern", "NgaySinh-dinh-dang-dmy", set_text(hoso(), ["NgaySinh"], "12/05/1990")),
    both("HoSoCBCCVC", "xsd.min_inclusive", None, "NgaySinh-truoc-1900", set_text(hoso(), ["NgaySinh"], "1899-12-31")),
    both("HoSoCBCCVC", "xsd.invalid_value", "json.minimum", "BacLuong-0", set_text(hoso(), ["BacLuong"], "0")),
    both("HoSoCBCCVC", "xsd.max_inclusive", "json.maximum", "BacLuong-13", set_text(hoso(), ["BacLuong"], "13")),
    both("HoSoCBCCVC", "xsd.fraction_digits", "json.pattern", "HeSoLuong-ba-so-le", set_text(hoso(), ["HeSoLuong"], "3.456")),
    both("HoSoCBCCVC", "xsd.total_digits", "json.pattern", "HeSoLuong-qua-lon", set_text(hoso(), ["HeSoLuong"], "123.45")),
    both("HoSoCBCCVC", "xsd.invalid_value", "json.pattern", "HeSoLuong-khong-phai-so", set_text(hoso(), ["HeSoLuong"], "ba")),
    both("HoSoCBCCVC", "xsd.min_exclusive", None, "HeSoLuong-bang-0", set_text(hoso(), ["HeSoLuong"], "0.00")),
    both("HoSoCBCCVC", "xsd.attribute_missing", "json.required", "thieu-phienBan", (lambda d: (d[1].pop("phienBan"), d)[1])(hoso())),
    both("HoSoCBCCVC", "xsd.attribute_unexpected", "json.additional_properties", "thuoc-tinh-la", (lambda d: (d[1].update(nguon="HRM"), d)[1])(hoso())),
    both("HoSoCBCCVC", "xsd.enumeration", "json.enum", "loaiThaoTac-Xoa", hoso(action="Xoa")),
    both("HoSoCBCCVC", "xsd.enumeration", "json.enum", "phienBan-2", (lambda d: (d[1].update(phienBan="2.0"), d)[1])(hoso())),
    both("HoSoCBCCVC", "xsd.enumeration", "json.enum", "HangChucDanh-V", giao_vien(hang="V")),
    both("HoSoCBCCVC", "xsd.pattern", "json.pattern", "MaNgach-chuc-danh-thieu-so", giao_vien(ngach="V.7.03.29")),
    both("HoSoCBCCVC", "xsd.pattern", "json.pattern", "LoaiCanBo-co-dau", giao_vien(loai="Viên chức")),
    both("HoSoCBCCVC", "xsd.unexpected_element", None, "LoaiCanBo-sau-MaNgach", (lambda d: (d[2].remove(find(d, "LoaiCanBo")), insert_after(d, ["MaNgach"], E("LoaiCanBo", "VienChuc")), d)[2])(giao_vien())),
    both("HoSoCBCCVC", "xsd.unexpected_element", "json.max_items", "DaoTao-21-lan", (lambda d: (d[2].extend([copy.deepcopy(find(d, "DaoTao")) for _ in range(20)]), d)[1])(hoso())),
    both("HoSoCBCCVC", "xsd.invalid_value", "json.pattern", "NamTotNghiep-hai-chu-so", set_text(hoso(), ["DaoTao", "NamTotNghiep"], "13")),
    both("HoSoCBCCVC", "xsd.nil_not_allowed", "json.type", "QueQuan-nil", set_text(hoso(), ["QueQuan"], NIL)),
    both("HoSoCBCCVC", "xsd.missing_element", "json.required", "CongTac-thieu-DonVi", remove(hoso(), ["QuaTrinhCongTac", "DonViCongTac"])),
    both("HoSoCBCCVC", "xsd.pattern", "json.pattern", "MaNgach-thieu-so", set_text(hoso(), ["MaNgach"], "1.003")),
    both("HoSoCBCCVC", "xsd.pattern", "json.pattern", "TrinhDo-co-dau", set_text(hoso(), ["TrinhDoChuyenMon"], "Đại học")),
    both("HoSoCBCCVC", "xsd.pattern", "json.pattern", "Luong-MaNgach-sai", set_text(hoso(), ["QuaTrinhLuong", "MaNgach"], "A1")),
    both("BienChe", "xsd.missing_element", "json.required", "thieu-ChiTiet", (lambda d: (d.__setitem__(2, [c for c in d[2] if c[0] != "ChiTiet"]), d)[1])(bienche())),
    both("BienChe", "xsd.min_inclusive", "json.minimum", "SoLuong-am", set_text(bienche(), ["ChiTiet", "SoLuong"], "-1")),
    both("BienChe", "xsd.invalid_value", "json.maximum", "SoLuong-vuot-int", set_text(bienche(), ["ChiTiet", "SoLuong"], "3000000000")),
    both("BienChe", "xsd.invalid_value", "json.pattern", "Nam-hai-chu-so", set_text(bienche(), ["Nam"], "26")),
    both("BienChe", "xsd.invalid_value", "json.minimum", "DuocGiao-am", set_text(bienche(), ["BienCheDuocGiao"], "-5")),
    both("BienChe", "xsd.invalid_value", "json.pattern", "NgayLap-thang-13", set_text(bienche(), ["NgayLap"], "2026-13-01")),
    both("BienChe", "xsd.missing_element", "json.required", "thieu-NguoiLap", remove(bienche(), ["NguoiLap"])),
    both("BienChe", "xsd.unexpected_element", "json.additional_properties", "thua-phan-tu-cuoi", (lambda d: (d[2].append(E("GhiChu", "x")), d)[1])(bienche())),
    both("PheDuyetDuLieu", "xsd.pattern", "json.pattern", "KyPheDuyet-thang-13", set_text(pheduyet(), ["KyPheDuyet"], "2026-13")),
    both("PheDuyetDuLieu", "xsd.invalid_value", "json.pattern", "ThoiDiem-chi-co-ngay", set_text(pheduyet(), ["ThoiDiemPheDuyet"], "2026-10-31")),
    both("PheDuyetDuLieu", "xsd.invalid_value", "json.pattern", "ThoiDiem-25-gio", set_text(pheduyet(), ["ThoiDiemPheDuyet"], "2026-10-31T25:00:00")),
    both("PheDuyetDuLieu", "xsd.invalid_value", "json.minimum", "SoLuongHoSo-0", set_text(pheduyet(), ["SoLuongHoSo"], "0")),
    both("PheDuyetDuLieu", "xsd.missing_element", "json.required", "thieu-HoSo", (lambda d: (d.__setitem__(2, [c for c in d[2] if c[0] != "HoSo"]), d)[1])(pheduyet())),
    both("PheDuyetDuLieu", "xsd.pattern", "json.pattern", "BamSHA256-chu-hoa", set_text(pheduyet(), ["HoSo", "BamSHA256"], "A" * 64)),
    both("PheDuyetDuLieu", "xsd.min_length", "json.min_length", "MaBanGhi-rong", set_text(pheduyet(), ["HoSo", "MaBanGhi"], "")),
    both("BienDong", "xsd.missing_element", "json.one_of", "khong-co-loai-bien-dong", remove(biendong(), ["DieuDong"])),
    both("BienDong", "xsd.unexpected_element", "json.one_of", "hai-loai-bien-dong", insert_after(biendong(), ["DieuDong"], E("NghiHuu", [E("SoNamCongTac", "30"), E("HuongLuongHuu", "true")]))),
    both("BienDong", "xsd.missing_element", "json.required", "DieuDong-thieu-MaDonViMoi", remove(biendong(), ["DieuDong", "MaDonViMoi"])),
    both("BienDong", "xsd.max_inclusive", "json.maximum", "SoNamCongTac-61", set_text(biendong("NghiHuu"), ["NghiHuu", "SoNamCongTac"], "61")),
    both("BienDong", "xsd.invalid_value", "json.type", "HuongLuongHuu-yes", set_text(biendong("NghiHuu"), ["NghiHuu", "HuongLuongHuu"], "yes")),
    both("BienDong", "xsd.min_length", "json.min_length", "SoQuyetDinh-ngan", set_text(biendong(), ["SoQuyetDinh"], "1")),
    both("BienDong", "xsd.missing_element", "json.required", "thieu-NgayHieuLuc", remove(biendong(), ["NgayHieuLuc"])),
    both("BienDong", "xsd.pattern", "json.pattern", "MaDonViMoi-sai", set_text(biendong(), ["DieuDong", "MaDonViMoi"], "so-tai-chinh")),
]

# Cases that exist only in XML: structure JSON cannot express, and well-formedness.
XML_ONLY = [
    ("HoSoCBCCVC", "xsd.missing_element", "sai-thu-tu", lambda: to_xml(swap(hoso(), "HoVaTen", "NgaySinh"))),
    ("HoSoCBCCVC", "xsd.text_not_allowed", "chu-trong-noi-dung-phan-tu", lambda: to_xml(hoso()).replace("<DanToc>", "ghi chú lạc <DanToc>", 1)),
    ("HoSoCBCCVC", "xsd.unexpected_element", "phan-tu-trong-kieu-don", lambda: to_xml(hoso()).replace("<HoVaTen>Nguyễn Văn An</HoVaTen>", "<HoVaTen>Nguyễn <b>Văn</b> An</HoVaTen>")),
    ("HoSoCBCCVC", "xsd.unknown_root", "sai-namespace", lambda: to_xml(hoso(), ns="urn:lgsp:cbccvc:v2")),
    ("HoSoCBCCVC", "xsd.unknown_root", "khong-namespace", lambda: to_xml(hoso(), ns="")),
    ("HoSoCBCCVC", "xsd.nil_with_content", "ChucVu-nil-co-noi-dung", lambda: to_xml(hoso()).replace("<ChucVu>Chuyên viên</ChucVu>", f'<ChucVu xmlns:xsi="{XSI}" xsi:nil="true">Chuyên viên</ChucVu>', 1)),
    ("HoSoCBCCVC", "xsd.invalid_value", "NgaySinh-30-thang-2", lambda: to_xml(set_text(hoso(), ["NgaySinh"], "1990-02-30"))),
    ("HoSoCBCCVC", "xml.truncated", "bi-cat-cuoi", lambda: to_xml(hoso())[:-40]),
    ("HoSoCBCCVC", "xml.malformed", "the-dong-sai", lambda: to_xml(hoso()).replace("</DanToc>", "</DanTo>", 1)),
    ("HoSoCBCCVC", "xml.malformed", "thuoc-tinh-lap", lambda: to_xml(hoso()).replace('phienBan="1.0"', 'phienBan="1.0" phienBan="1.0"', 1)),
    ("BienChe", "xsd.missing_element", "ChiTiet-sau-NguoiLap", lambda: to_xml(move_last(bienche(), "ChiTiet"))),
    ("PheDuyetDuLieu", "xsd.enumeration", "Signature-rsa-sha1", lambda: to_xml(pheduyet()).replace("xmldsig-more#ecdsa-sha256", "2000/09/xmldsig#rsa-sha1", 1)),
    ("PheDuyetDuLieu", "xsd.missing_element", "Signature-thieu-KeyInfo", lambda: to_xml(pheduyet()).replace(f"<ds:KeyInfo><ds:X509Data><ds:X509Certificate>{B64}</ds:X509Certificate></ds:X509Data></ds:KeyInfo>", "", 1)),
    ("PheDuyetDuLieu", "xsd.unexpected_element", "Signature-co-Object", lambda: to_xml(pheduyet()).replace("</ds:KeyInfo></ds:Signature>", "</ds:KeyInfo><ds:Object><HoSo/></ds:Object></ds:Signature>", 1)),
    ("PheDuyetDuLieu", "xsd.length", "Reference-mot-phan", lambda: to_xml(pheduyet()).replace('<ds:Reference URI="">', '<ds:Reference URI="#HoSo-1">', 1)),
    ("PheDuyetDuLieu", "xsd.missing_element", "khong-chu-ky", lambda: to_xml(pheduyet(signed=False))),
    ("PheDuyetDuLieu", "xsd.unexpected_element", "ba-chu-ky", lambda: to_xml((lambda d: (d[2].append(E(RAW, (SIG_XML, SIG_JWS))), d)[1])(pheduyet()))),
    ("BienDong", "xsd.unexpected_element", "DieuDong-lap-TenDonViMoi", lambda: to_xml(biendong()).replace("<TenDonViMoi>Sở Tài chính</TenDonViMoi>", "<TenDonViMoi>Sở Tài chính</TenDonViMoi><TenDonViMoi>Sở Tài chính</TenDonViMoi>")),
    ("BienDong", "xsd.nil_with_content", "GhiChu-nil-co-noi-dung", lambda: to_xml(with_ghichu(biendong(), "x")).replace("<GhiChu>", f'<GhiChu xmlns:xsi="{XSI}" xsi:nil="true">')),
]

# Cases that exist only in JSON: its types.
JSON_ONLY = [
    ("HoSoCBCCVC", "json.type", "BacLuong-la-chuoi", lambda j: j["HoSoCBCCVC"].__setitem__("BacLuong", "3")),
    ("HoSoCBCCVC", "json.type", "HeSoLuong-la-so", lambda j: j["HoSoCBCCVC"].__setitem__("HeSoLuong", 3.0)),
    ("HoSoCBCCVC", "json.type", "QuaTrinhCongTac-la-doi-tuong", lambda j: j["HoSoCBCCVC"].__setitem__("QuaTrinhCongTac", j["HoSoCBCCVC"]["QuaTrinhCongTac"][0])),
    ("HoSoCBCCVC", "json.type", "goc-la-mang", lambda j: j.__setitem__("HoSoCBCCVC", [j["HoSoCBCCVC"]])),
    ("HoSoCBCCVC", "json.type", "SoCCCD-la-so", lambda j: j["HoSoCBCCVC"].__setitem__("SoCCCD", 1090012345)),
    ("BienChe", "json.type", "SoLuong-la-so-thuc", lambda j: j["BienChe"]["ChiTiet"][0].__setitem__("SoLuong", 10.5)),
    ("BienChe", "json.type", "ChiTiet-null", lambda j: j["BienChe"].__setitem__("ChiTiet", None)),
    ("PheDuyetDuLieu", "json.type", "ChuKySo-la-chuoi", lambda j: j["PheDuyetDuLieu"].__setitem__("ChuKySo", B64)),
    ("PheDuyetDuLieu", "json.required", "ChuKySo-thieu-signature", lambda j: j["PheDuyetDuLieu"]["ChuKySo"][0].pop("signature")),
    ("PheDuyetDuLieu", "json.max_items", "ba-chu-ky", lambda j: j["PheDuyetDuLieu"]["ChuKySo"].append(SIG_JWS)),
    ("PheDuyetDuLieu", "json.pattern", "ChuKySo-protected-base64-thuong", lambda j: j["PheDuyetDuLieu"]["ChuKySo"][0].__setitem__("protected", B64)),
    ("PheDuyetDuLieu", "json.required", "khong-chu-ky", lambda j: j["PheDuyetDuLieu"].pop("ChuKySo")),
    ("BienDong", "json.type", "NghiHuu-la-mang", lambda j: j["BienDong"].__setitem__("DieuDong", [])),
]

# Schema-valid, domain-invalid (both formats): the rule our domain checks report.
DOMAIN = [
    ("HoSoCBCCVC", "cccd.province", "ma-tinh-003", set_text(hoso(), ["SoCCCD"], "003090012345")),
    ("HoSoCBCCVC", "cccd.century_gender", "nu-nhung-gioi-tinh-nam", set_text(hoso(), ["SoCCCD"], "001190012345")),
    ("HoSoCBCCVC", "cccd.century_gender", "the-ky-21-nhung-sinh-1990", set_text(hoso(), ["SoCCCD"], "001290012345")),
    ("HoSoCBCCVC", "cccd.birth_year", "nam-sinh-91", set_text(hoso(), ["SoCCCD"], "001091012345")),
    ("HoSoCBCCVC", "date.in_future", "NgayTuyenDung-2099", set_text(hoso(), ["NgayTuyenDung"], "2099-01-01")),
    ("HoSoCBCCVC", "date.recruitment_before_birth", "tuyen-dung-truoc-khi-sinh", set_text(hoso(), ["NgayTuyenDung"], "1989-01-01")),
    ("HoSoCBCCVC", "salary.coefficient_mismatch", "HeSoLuong-9.99-ngach-A1", set_text(hoso(), ["HeSoLuong"], "9.99")),
    ("HoSoCBCCVC", "salary.coefficient_mismatch", "HeSoLuong-3.01-bac-3", set_text(hoso(), ["HeSoLuong"], "3.01")),
    ("HoSoCBCCVC", "salary.coefficient_mismatch", "Luong-HeSoLuong-1.00-ngach-A1", set_text(hoso(), ["QuaTrinhLuong", "HeSoLuong"], "1.00")),
    ("HoSoCBCCVC", "salary.step_out_of_range", "BacLuong-10-nhom-A1", set_text(hoso(), ["BacLuong"], "10")),
    ("HoSoCBCCVC", "salary.step_out_of_range", "giao-vien-mam-non-hang-I-bac-9", giao_vien(ngach="V.07.02.24", hang="I", bac="9", he_so="6.72")),
    ("HoSoCBCCVC", "code.unknown", "MaNgach-khong-co-trong-danh-muc", set_text(hoso(), ["MaNgach"], "09.999")),
    ("HoSoCBCCVC", "code.unknown", "DanToc-khong-co", hoso(dan_toc="Kinh tế")),
    ("HoSoCBCCVC", "code.unknown", "TonGiao-ma-99", hoso(ton_giao="99")),
    ("HoSoCBCCVC", "code.unknown", "TrinhDo-la", set_text(hoso(), ["TrinhDoChuyenMon"], "CuNhanLuat")),
    ("HoSoCBCCVC", "code.unknown", "LoaiCanBo-la", giao_vien(loai="CongNhan")),
    ("HoSoCBCCVC", "code.unknown", "DaoTao-TrinhDo-la", set_text(hoso(), ["DaoTao", "TrinhDo"], "KySu")),
    ("HoSoCBCCVC", "cccd.province", "999-khong-la-tinh-hay-quoc-gia", set_text(hoso(), ["SoCCCD"], "999090012345")),
    ("HoSoCBCCVC", "staff.category_mismatch", "cong-chuc-giu-chuc-danh", giao_vien(loai="CongChuc")),
    ("HoSoCBCCVC", "staff.category_mismatch", "vien-chuc-giu-ngach", hoso(version="1.1", loai="VienChuc")),
    ("HoSoCBCCVC", "title.grade_mismatch", "HangChucDanh-II-cho-hang-III", giao_vien(hang="II")),
    ("HoSoCBCCVC", "title.grade_mismatch", "ngach-khong-co-hang", (lambda d: (insert_after(d, ["MaNgach"], E("HangChucDanh", "III")), d)[1])(hoso())),
    ("HoSoCBCCVC", "version.field_required", "v1.1-thieu-LoaiCanBo", hoso(version="1.1")),
    ("HoSoCBCCVC", "version.field_required", "v1.1-chuc-danh-thieu-hang", giao_vien(hang=None)),
    ("PheDuyetDuLieu", "cccd.province", "HoSo-ma-tinh-099", set_text(pheduyet(), ["HoSo", "SoCCCD"], "099090012345")),
    ("PheDuyetDuLieu", "approval.count_mismatch", "SoLuongHoSo-3-nhung-2-HoSo", set_text(pheduyet(), ["SoLuongHoSo"], "3")),
    ("BienChe", "staffing.total_mismatch", "ChiTiet-cong-khong-bang-CoMat", set_text(bienche(), ["BienCheCoMat"], "31")),
    ("BienChe", "code.unknown", "ChiTiet-MaNgach-khong-co", bienche(rows=1, codes=["09.999"])),
    ("BienDong", "cccd.province", "ma-tinh-000", set_text(biendong(), ["SoCCCD"], "000090012345")),
]

# Only the JSON side needs a calendar check the pattern cannot make.
DOMAIN_JSON_ONLY = [
    ("HoSoCBCCVC", "date.invalid", "NgaySinh-30-thang-2", set_text(hoso(), ["NgaySinh"], "1990-02-30")),
    ("BienChe", "date.invalid", "NgayLap-31-thang-4", set_text(bienche(), ["NgayLap"], "2026-04-31")),
]


def swap(doc, a, b):
    kids = doc[2]
    i = next(i for i, c in enumerate(kids) if c[0] == a)
    j = next(i for i, c in enumerate(kids) if c[0] == b)
    kids[i], kids[j] = kids[j], kids[i]
    return doc


def move_last(doc, name):
    kids = doc[2]
    moved = [c for c in kids if c[0] == name]
    doc[2] = [c for c in kids if c[0] != name] + moved
    return doc


def sign_valid_approvals():
    """Signs every valid approval twice (the person, then the agency) with `lgsp-gateway sign`."""
    root = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
    valid = os.path.join(HERE, "valid")
    for f in sorted(os.listdir(valid)):
        if not f.startswith("PheDuyetDuLieu-"):
            continue
        path = os.path.join(valid, f)
        for who in ("person", "agency"):
            subprocess.run(
                ["cargo", "run", "-q", "--bin", "lgsp-gateway", "--", "sign",
                 "--key", os.path.join(SIGNING, f"{who}.key.pem"), "--cert", os.path.join(SIGNING, f"{who}.pem"),
                 "--out", path, path],
                cwd=root, check=True)


def main():
    for sub in ("valid", "invalid"):
        d = os.path.join(HERE, sub)
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
    n = {}

    def name(t, rule, slug, ext):
        n[(t, ext)] = n.get((t, ext), 0) + 1
        parts = [t, f"{n[(t, ext)]:02d}"] + ([rule] if rule else []) + [slug]
        return "-".join(parts) + "." + ext

    def put(sub, fname, text):
        with open(os.path.join(HERE, sub, fname), "w", encoding="utf-8") as f:
            f.write(text)

    def put_json(sub, fname, value):
        put(sub, fname, json.dumps(value, ensure_ascii=False, indent=2) + "\n")

    for t, slug, doc in VALID:
        put("valid", name(t, None, slug, "xml"), to_xml(doc))
        put_json("valid", name(t, None, slug, "json"), to_json(doc))
    for t, xml_rule, json_rule, slug, doc in INVALID:
        if xml_rule:
            put("invalid", name(t, xml_rule, slug, "xml"), to_xml(doc))
        if json_rule:
            put_json("invalid", name(t, json_rule, slug, "json"), to_json(doc))
    for t, rule, slug, make in XML_ONLY:
        put("invalid", name(t, rule, slug, "xml"), make())
    for t, rule, slug, mutate in JSON_ONLY:
        j = to_json({"HoSoCBCCVC": hoso, "BienChe": bienche, "PheDuyetDuLieu": pheduyet, "BienDong": biendong}[t]())
        mutate(j)
        put_json("invalid", name(t, rule, slug, "json"), j)
    for t, rule, slug, doc in DOMAIN:
        put("invalid", name(t, rule, slug, "xml"), to_xml(doc))
        put_json("invalid", name(t, rule, slug, "json"), to_json(doc))
    for t, rule, slug, doc in DOMAIN_JSON_ONLY:
        put_json("invalid", name(t, rule, slug, "json"), to_json(doc))
    # Not UTF-8: a Latin-1 byte inside a name.
    raw = to_xml(hoso()).replace("Nguyễn Văn An", "Nguy\x00n").encode("utf-8").replace(b"\x00", b"\xe9")
    with open(os.path.join(HERE, "invalid", name("HoSoCBCCVC", "xml.encoding", "khong-phai-utf8", "xml")), "wb") as f:
        f.write(raw)

    sign_valid_approvals()

    for sub in ("valid", "invalid"):
        files = os.listdir(os.path.join(HERE, sub))
        print(sub, "xml:", sum(f.endswith(".xml") for f in files), "json:", sum(f.endswith(".json") for f in files))


if __name__ == "__main__":
    main()
