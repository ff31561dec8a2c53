using System.Text.Json;
using SdFunctions.Inference.Quality;

namespace SdFunctions.Inference.Tests;

/// <summary>
/// The tiny-shapes judge against the fixture's own verdicts (reference/shapes_judge: 480 generated pictures with fill, asym,
/// area and box), on pictures drawn here from the grammar's rules, and the grammar itself.
/// </summary>
public class ShapeJudgeTests
{
    private static readonly string JudgeCases = Path.Combine(Fixtures.Reference, "shapes_judge");

    private static IEnumerable<JsonElement> Cases() =>
        JsonDocument.Parse(File.ReadAllText(Path.Combine(JudgeCases, "cases.json"))).RootElement.GetProperty("cases").EnumerateArray();

    [Fact]
    public void EveryReferenceVerdictIsReproduced()
    {
        int agreed = 0, accepted = 0;
        foreach (var c in Cases())
        {
            string file = c.GetProperty("file").GetString()!;
            var v = ShapeJudge.Judge(Fixtures.Pixels(Path.Combine(JudgeCases, file)), 64, 64);
            var caption = ShapesCaption.TryParse(c.GetProperty("caption").GetString()!)!;
            Assert.Equal((c.GetProperty("bg").GetString(), c.GetProperty("colour").GetString(), c.GetProperty("kind").GetString()), (v.Background, v.Colour, v.Kind));
            Assert.Equal(c.GetProperty("area").GetInt32(), v.Area);
            Assert.Equal(c.GetProperty("ok").GetBoolean(), v.Matches(caption));
            if (v.Kind != ShapeVerdict.None)
            {
                // The fixture rounds fill and asym to 3 decimals.
                Assert.Equal(c.GetProperty("fill").GetDouble(), v.Fill, 0.0005 + 1e-9);
                Assert.Equal(c.GetProperty("asym").GetDouble(), v.Asym, 0.0005 + 1e-9);
                int[] box = [.. c.GetProperty("bbox").EnumerateArray().Select(e => e.GetInt32())];
                Assert.Equal(new PixelBox(box[0], box[1], box[2], box[3]), v.Bbox);
            }
            agreed++;
            if (v.Matches(caption)) accepted++;
        }
        Assert.Equal(480, agreed);
        // The README's table: guidance 3.0 draws right 90–95 %, 7.5 far less (PNDM 3 %): the judge must tell those apart.
        Assert.InRange(accepted, 240, 440);
    }

    [Theory]
    [InlineData("pndm"), InlineData("ddim"), InlineData("euler")]
    public void TheReferenceRunsImagesAreAccepted(string run)
    {
        var meta = Fixtures.Meta("shapes").GetProperty("runs").GetProperty(run);
        var oracle = meta.GetProperty("oracle");
        var v = ShapeJudge.Judge(Fixtures.Bytes("shapes", $"{run}/image_uint8"), 64, 64);
        Assert.Equal((oracle.GetProperty("bg").GetString(), oracle.GetProperty("colour").GetString(), oracle.GetProperty("kind").GetString()), (v.Background, v.Colour, v.Kind));
        Assert.Equal(oracle.GetProperty("area").GetInt32(), v.Area);
        Assert.True(v.Matches(ShapesCaption.TryParse(meta.GetProperty("prompt").GetString()!)!));
    }

    [Fact]
    public void EveryCaptionDrawnByTheGrammarsRulesIsReadBack()
    {
        var rng = new Random(5);
        foreach (var caption in ShapesCaption.All)
        {
            byte[] picture = Draw(caption, size: rng.Next(20, 41), cx: rng.Next(26, 39), cy: rng.Next(26, 39), jitter: rng);
            var v = ShapeJudge.Judge(picture, 64, 64);
            Assert.True(v.Matches(caption), $"{caption}: read as a {v.Colour} {v.Kind} on {v.Background} (fill {v.Fill:F3}, asym {v.Asym:F3})");
        }
    }

    [Fact]
    public void APlainPictureHasNoShapeAndAWrongColourIsNoMatch()
    {
        var blank = Draw(new ShapesCaption("red", "circle", "blue"), size: 0, cx: 32, cy: 32, jitter: null);
        var v = ShapeJudge.Judge(blank, 64, 64);
        Assert.Equal(("blue", ShapeVerdict.None, ShapeVerdict.None), (v.Background, v.Colour, v.Kind));
        var drawn = Draw(new ShapesCaption("red", "square", "blue"), size: 30, cx: 32, cy: 32, jitter: null);
        Assert.False(ShapeJudge.Judge(drawn, 64, 64).Matches(new ShapesCaption("green", "square", "blue")));
        Assert.False(ShapeJudge.Judge(drawn, 64, 64).Matches(new ShapesCaption("red", "circle", "blue")));
        Assert.Throws<ArgumentException>(() => ShapeJudge.Judge(drawn, 32, 64));
    }

    [Fact]
    public void TheGrammarHasNinetyCaptionsOfOneTokenWords()
    {
        Assert.Equal(90, ShapesCaption.All.Count);
        Assert.Equal(90, ShapesCaption.All.Distinct().Count());
        Assert.All(ShapesCaption.All, c => Assert.Equal(c, ShapesCaption.TryParse(c.ToString())));
        Assert.Null(ShapesCaption.TryParse("a red circle on a red background")); // colour = background
        Assert.Null(ShapesCaption.TryParse("a purple circle on a red background"));
        Assert.Null(ShapesCaption.TryParse("a photo of an astronaut"));
        Assert.Null(ShapesCaption.TryParse("A red circle on a blue background"));
    }

    /// <summary>A picture as the fixture's data was made: a filled shape (side or diameter <paramref name="size"/>) on a plain background, colours jittered.</summary>
    private static byte[] Draw(ShapesCaption caption, int size, int cx, int cy, Random? jitter)
    {
        var fg = Colour(caption.Colour, jitter);
        var bg = Colour(caption.Background, jitter);
        var rgb = new byte[64 * 64 * 3];
        double half = size / 2.0;
        for (int y = 0; y < 64; y++)
            for (int x = 0; x < 64; x++)
            {
                double px = x + 0.5 - cx, py = y + 0.5 - cy;
                bool inside = size > 0 && caption.Shape switch
                {
                    "circle" => px * px + py * py <= half * half,
                    "square" => Math.Abs(px) <= half && Math.Abs(py) <= half,
                    // Upright isosceles, base = height = size: apex at the top.
                    _ => py >= -half && py <= half && Math.Abs(px) <= (py + half) / 2,
                };
                var c = inside ? fg : bg;
                rgb[3 * (y * 64 + x)] = c.R; rgb[3 * (y * 64 + x) + 1] = c.G; rgb[3 * (y * 64 + x) + 2] = c.B;
            }
        return rgb;
    }

    private static (byte R, byte G, byte B) Colour(string name, Random? jitter)
    {
        var p = ShapesCaption.Palette.Single(e => e.Name == name);
        byte J(byte v) => (byte)Math.Clamp(v + (jitter?.Next(-12, 13) ?? 0), 0, 255);
        return (J(p.R), J(p.G), J(p.B));
    }
}
