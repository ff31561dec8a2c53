using SixLabors.ImageSharp;
using SixLabors.ImageSharp.Formats.Png;
using SixLabors.ImageSharp.PixelFormats;

namespace SdFunctions.Inference.Quality;

/// <summary>
/// An evaluation as one picture: each case is a pair, reference left and candidate right, each over a bar with the judge's verdict
/// (green: read as its caption, red: not, grey: a prompt the judge cannot read). Small pictures are scaled up (nearest neighbour)
/// so 64 px images can be looked at.
/// </summary>
public static class ContactSheet
{
    private const int Bar = 6, BarGap = 2, Gap = 2, PairGap = 10, PairsPerRow = 5;
    private static readonly Rgb24 Right = new(40, 170, 60), Wrong = new(215, 40, 40), Unjudged = new(150, 150, 150), Paper = new(255, 255, 255);

    public static async Task<byte[]> DrawAsync(IReadOnlyList<EvaluatedImage> images, int width, int height, CancellationToken ct = default)
    {
        if (images.Count == 0) throw new ArgumentException("There is nothing to draw: the evaluation has no cases.", nameof(images));
        int scale = Math.Max(1, 128 / Math.Max(width, height));
        int cellW = width * scale, cellH = height * scale + BarGap + Bar;
        int pairW = 2 * cellW + Gap, rows = (images.Count + PairsPerRow - 1) / PairsPerRow;
        int columns = Math.Min(PairsPerRow, images.Count);
        using var sheet = new Image<Rgb24>(columns * pairW + (columns + 1) * PairGap, rows * cellH + (rows + 1) * PairGap, Paper);
        for (int i = 0; i < images.Count; i++)
        {
            int x = PairGap + (i % PairsPerRow) * (pairW + PairGap), y = PairGap + (i / PairsPerRow) * (cellH + PairGap);
            Paste(sheet, images[i].ReferenceRgb, width, height, scale, x, y, VerdictColour(images[i].ReferenceRight));
            Paste(sheet, images[i].CandidateRgb, width, height, scale, x + cellW + Gap, y, VerdictColour(images[i].CandidateRight));
        }
        using var png = new MemoryStream();
        await sheet.SaveAsync(png, new PngEncoder(), ct);
        return png.ToArray();
    }

    private static Rgb24 VerdictColour(bool? right) => right switch { true => Right, false => Wrong, null => Unjudged };

    private static void Paste(Image<Rgb24> sheet, byte[] rgb, int width, int height, int scale, int left, int top, Rgb24 verdict)
    {
        for (int y = 0; y < height * scale; y++)
            for (int x = 0; x < width * scale; x++)
            {
                int i = 3 * ((y / scale) * width + x / scale);
                sheet[left + x, top + y] = new Rgb24(rgb[i], rgb[i + 1], rgb[i + 2]);
            }
        for (int y = height * scale + BarGap; y < height * scale + BarGap + Bar; y++)
            for (int x = 0; x < width * scale; x++)
                sheet[left + x, top + y] = verdict;
    }
}
